/**
 * One forward pass through the stages of a staged package: the token ids to the row stages that
 * hold them (embeddings back), the rows through each layer stage in order, the last rows to
 * every row stage (their slices of the logits back, put together). The front (PipelineModel)
 * runs it over its stages directly, or hands the whole pass to a stage host that runs it next to
 * the stages (Workers: one call from the front per pass instead of one per stage).
 *
 * Everything in and out is plain data (numbers, arrays, Float32Arrays), so a pass crosses RPC.
 */
import { AppError } from '../../core/errors.ts'
import { pipelineParts, type PipelineEntry } from '../../format/index.ts'
import type { StageApi, StageGroup, StageOp, StageState } from './stage.ts'

export interface PassRequest {
  /** The rows' token ids, group after group. */
  ids: number[]
  groups: StageGroup[]
  /** Ops for each layer stage (in plan order), applied before its rows. */
  ops: StageOp[][]
  /** Rows of each group the last layer stage returns. */
  keep: number
  /** Logits of the kept rows ([rows, vocab], or [rows, columns] of those token ids only). */
  logits?: { rows: number; columns?: number[] }
}

export interface PassReply {
  /** The logits asked for, else the kept rows' hidden states (normalised). */
  logits?: Float32Array
  hidden?: Float32Array
  /** Each stage's answer, in the order they came: its state, and ms from sending to it. */
  answers: Array<{ state: StageState; ms: number }>
}

/** Runs a whole pass: one plan, one call per stage (two for a row stage that embeds and scores). */
export type StagePass = (req: PassRequest) => Promise<PassReply>

/** Runs passes over `stages` (plan order) of the package planned by `plan`. */
export function passOver(
  plan: PipelineEntry,
  hidden: number,
  vocab: number,
  stages: readonly StageApi[],
): StagePass {
  const parts = pipelineParts(plan)
  const layers = parts.layers.map((p) => stages[p.index])
  const rows = parts.rows.map((p) => ({ api: stages[p.index], rows: p.rows }))
  return async (req) => {
    const answers: PassReply['answers'] = []
    const timed = async <R extends { state: StageState }>(send: () => Promise<R>): Promise<R> => {
      const t0 = performance.now()
      const r = await send()
      answers.push({ state: r.state, ms: performance.now() - t0 })
      return r
    }
    if (req.ops.length !== layers.length)
      throw new AppError(
        'internal',
        `A pass with ops for ${req.ops.length} of ${layers.length} layer stages`,
      )

    // embeddings, each from the row stage holding its id
    const H = hidden
    let x: Float32Array = new Float32Array(req.ids.length * H)
    await Promise.all(
      rows.map(async (l) => {
        const at: number[] = []
        req.ids.forEach((t, i) => {
          if (t >= l.rows[0] && t < l.rows[1]) at.push(i)
        })
        if (!at.length) return
        const got = (await timed(() => l.api.embed(at.map((i) => req.ids[i])))).hidden
        at.forEach((i, j) => x.set(got.subarray(j * H, (j + 1) * H), i * H))
      }),
    )
    // the layers, in order
    const last = layers.length - 1
    for (let k = 0; k <= last; k++) {
      const input = x
      x = (
        await timed(() =>
          layers[k].forward(input, req.groups, req.ops[k], k === last ? req.keep : undefined),
        )
      ).hidden
    }
    if (!req.logits) return { hidden: x, answers }

    // the logits, each slice from its row stage
    const { rows: n, columns } = req.logits
    const width = columns ? columns.length : vocab
    const out = new Float32Array(n * width)
    await Promise.all(
      rows.map(async (l) => {
        const [a, b] = l.rows
        if (columns) {
          const at: number[] = []
          columns.forEach((v, i) => {
            if (v >= a && v < b) at.push(i)
          })
          if (!at.length) return
          const got = (
            await timed(() =>
              l.api.logits(
                x,
                n,
                at.map((i) => columns[i]),
              ),
            )
          ).logits
          for (let r = 0; r < n; r++)
            at.forEach((i, j) => (out[r * width + i] = got[r * at.length + j]))
          return
        }
        const got = (await timed(() => l.api.logits(x, n))).logits
        for (let r = 0; r < n; r++)
          out.set(got.subarray(r * (b - a), (r + 1) * (b - a)), r * width + a)
      }),
    )
    return { logits: out, answers }
  }
}
