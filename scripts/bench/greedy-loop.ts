/**
 * A bare greedy decode loop over an ONNX Runtime session: hand-built feeds, argmax, the
 * present.* outputs fed back as past_key_values.*. Nothing else, so it is the floor of any
 * engine's overhead on the same session. The same code drives onnxruntime-web and
 * onnxruntime-node: both expose the onnxruntime-common Tensor and InferenceSession API.
 */
import type { InferenceSession, Tensor } from 'onnxruntime-web'

export interface OrtApi {
  Tensor: new (
    type: 'int64' | 'float32',
    data: BigInt64Array | Float32Array,
    dims: readonly number[],
  ) => Tensor
}

export interface LoopShape {
  layers: number
  kvHeads: number
  headDim: number
}

/** One sequence (or a batch of equally long ones) in the loop. */
export interface LoopState {
  batch: number
  length: number
  past: Record<string, Tensor>
}

export class GreedyLoop {
  readonly pastNames: string[]
  private readonly hasPositionIds: boolean
  private readonly hasLogitsToKeep: boolean

  constructor(
    private readonly ort: OrtApi,
    readonly session: InferenceSession,
    readonly shape: LoopShape,
  ) {
    this.pastNames = session.inputNames.filter((n) => n.startsWith('past_key_values.'))
    this.hasPositionIds = session.inputNames.includes('position_ids')
    this.hasLogitsToKeep = session.inputNames.includes('num_logits_to_keep')
  }

  empty(batch = 1): LoopState {
    const past: Record<string, Tensor> = {}
    for (const name of this.pastNames) {
      past[name] = new this.ort.Tensor('float32', new Float32Array(0), [
        batch,
        this.shape.kvHeads,
        0,
        this.shape.headDim,
      ])
    }
    return { batch, length: 0, past }
  }

  /**
   * Runs `ids` (batch rows of equal length, flattened row by row) after `state`; returns each
   * row's argmax of the last kept position, the new state and the raw logits tensor.
   */
  async step(
    state: LoopState,
    ids: readonly number[],
    keep = 1,
  ): Promise<{ next: number[]; state: LoopState; logits: Tensor }> {
    const { Tensor: T } = this.ort
    const b = state.batch
    const n = ids.length / b
    const total = state.length + n
    const feeds: Record<string, Tensor> = {
      input_ids: new T('int64', BigInt64Array.from(ids, BigInt), [b, n]),
      attention_mask: new T('int64', new BigInt64Array(b * total).fill(1n), [b, total]),
      ...state.past,
    }
    if (this.hasPositionIds) {
      const pos = new BigInt64Array(b * n)
      for (let i = 0; i < b * n; i++) pos[i] = BigInt(state.length + (i % n))
      feeds.position_ids = new T('int64', pos, [b, n])
    }
    if (this.hasLogitsToKeep) {
      feeds.num_logits_to_keep = new T('int64', BigInt64Array.of(BigInt(keep)), [])
    }
    const out = await this.session.run(feeds)
    const logits = out.logits
    const [, rows, vocab] = logits.dims
    const data = logits.data as Float32Array
    const next: number[] = []
    for (let r = 0; r < b; r++) {
      const base = (r * rows + rows - 1) * vocab
      let best = 0
      for (let j = 1; j < vocab; j++) if (data[base + j] > data[base + best]) best = j
      next.push(best)
    }
    const past: Record<string, Tensor> = {}
    for (const name of this.pastNames)
      past[name] = out[name.replace('past_key_values.', 'present.')]
    return { next, state: { batch: b, length: total, past }, logits }
  }
}

export interface DecodeTrace {
  /** Generated ids, the first one from the prompt's step. */
  ids: number[]
  /** performance.now() when each id was known. */
  times: number[]
  startedAt: number
}

/** Greedy decode of `tokens` new tokens after `prompt` (batch 1). */
export async function greedyDecode(
  loop: GreedyLoop,
  prompt: readonly number[],
  tokens: number,
): Promise<DecodeTrace> {
  const startedAt = performance.now()
  let { next, state } = await loop.step(loop.empty(), prompt)
  const ids = [next[0]]
  const times = [performance.now()]
  while (ids.length < tokens) {
    ;({ next, state } = await loop.step(state, [ids[ids.length - 1]]))
    ids.push(next[0])
    times.push(performance.now())
  }
  return { ids, times, startedAt }
}

/** Tokens per second after the first token: (n - 1) / (t_n - t_1). */
export function decodeRate(times: readonly number[]): number {
  if (times.length < 2) return NaN
  return ((times.length - 1) / (times[times.length - 1] - times[0])) * 1000
}

export interface StreamsTrace {
  /** Stream index of every step, in run order (prefill steps included). */
  order: number[]
  /** End time of every step. */
  times: number[]
  startedAt: number
  endedAt: number
  tokens: number
}

/**
 * `prompts.length` greedy streams interleaved one step at a time (round robin), as an ideal
 * scheduler with no overhead would run them on one session.
 */
export async function interleavedDecode(
  loop: GreedyLoop,
  prompts: readonly (readonly number[])[],
  tokensEach: number,
): Promise<StreamsTrace> {
  const startedAt = performance.now()
  const order: number[] = []
  const times: number[] = []
  const streams = prompts.map((p) => ({ input: [...p], state: loop.empty(), made: 0 }))
  let tokens = 0
  for (let live = streams.length; live > 0;) {
    live = 0
    for (let s = 0; s < streams.length; s++) {
      const st = streams[s]
      if (st.made >= tokensEach) continue
      const r = await loop.step(st.state, st.input)
      st.state = r.state
      st.input = [r.next[0]]
      st.made++
      tokens++
      order.push(s)
      times.push(performance.now())
      if (st.made < tokensEach) live++
    }
  }
  return { order, times, startedAt, endedAt: performance.now(), tokens }
}

/** Most steps of other streams between two consecutive steps of one stream. */
export function maxGapSteps(order: readonly number[]): number {
  const last = new Map<number, number>()
  let gap = 0
  order.forEach((s, i) => {
    const prev = last.get(s)
    if (prev !== undefined) gap = Math.max(gap, i - prev - 1)
    last.set(s, i)
  })
  return gap
}

/** Longest wall time between two consecutive steps of one stream. */
export function maxGapMs(order: readonly number[], times: readonly number[]): number {
  const last = new Map<number, number>()
  let gap = 0
  order.forEach((s, i) => {
    const prev = last.get(s)
    if (prev !== undefined) gap = Math.max(gap, times[i] - times[prev])
    last.set(s, i)
  })
  return gap
}
