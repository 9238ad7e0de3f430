/**
 * Every stage of a staged package in this process (Node, Deno, tests): one read of the
 * package's shards feeds all stages, each taking the bytes of its part, and the front's
 * PipelineModel calls them directly. The same package and the same front as on Workers, where
 * each stage is its own isolate; here the stages only share the process.
 */
import { AppError } from '../../core/errors.ts'
import type { PackageHandle, ShardFilter, ShardSink } from '../package/loader.ts'
import { PipelineModel } from './pipeline-model.ts'
import { ModelStage } from './stage.ts'
import type { DecoderOptions } from '../wasm/decoder.ts'

export async function loadPipelineInProcess(
  handle: PackageHandle,
  options: DecoderOptions = {},
): Promise<PipelineModel> {
  const plan = handle.manifest.pipeline
  if (!plan) throw new AppError('model_invalid', `Package ${handle.manifest.id} has no pipeline`)
  const handles = fanOut(handle, plan.stages.length)
  const stages = await Promise.all(handles.map((h, i) => ModelStage.load(h, i, options)))
  const model = new PipelineModel(handle.manifest, stages)
  await model.refresh()
  return model
}

/**
 * `n` handles of one package whose streams are served by a single stream of it: once all `n`
 * have asked, each shard any of them wants is read (and verified) once and handed to each that
 * wants it.
 */
function fanOut(handle: PackageHandle, n: number): PackageHandle[] {
  const readers: Array<{ sink: ShardSink; wanted?: ShardFilter }> = []
  let started: Promise<void> | undefined
  let begin!: () => void
  const all = new Promise<void>((resolve) => (begin = resolve))
  const stream = async (sink: ShardSink, wanted?: ShardFilter): Promise<void> => {
    readers.push({ sink, wanted })
    if (readers.length === n) {
      started = handle.stream(
        async (file, offset, bytes) => {
          for (const r of readers)
            if (!r.wanted || r.wanted(file, offset, bytes.byteLength))
              await r.sink(file, offset, bytes)
        },
        (file, offset, bytes) => readers.some((r) => !r.wanted || r.wanted(file, offset, bytes)),
      )
      begin()
    }
    await all
    return started
  }
  return Array.from({ length: n }, () => ({ ...handle, stream }))
}
