/**
 * Which model runs a package: the engine's kernels alone when its decoder map and head cover the
 * whole model (one copy of the weights, no onnxruntime session), else the ONNX graph on
 * onnxruntime-web, with decode steps in the engine's decoder when the package maps it.
 * `prefill: 'graph'` keeps prompts in the graph (onnxruntime's prefill, next to the decoder's
 * copy of the weights); `decoder: false` runs everything in the graph. A package split into
 * stages runs them, all in this process, behind the front's PipelineModel.
 */
import type { ForwardModel } from './forward.ts'
import { QwenModel, type SessionOptions } from './graph/model.ts'
import type { PackageHandle } from './package/loader.ts'
import type { LoadedPackage } from './package/model-package.ts'
import type { Manifest } from '../format/index.ts'
import { loadPipelineInProcess } from './pipeline/in-process.ts'
import { PipelineModel } from './pipeline/pipeline-model.ts'
import type { StagePass } from './pipeline/pass.ts'
import type { StageApi } from './pipeline/stage.ts'
import { streamKernelModel } from './wasm/kernel-loader.ts'
import { KernelModel } from './wasm/kernel-model.ts'

export interface ModelOptions extends SessionOptions {
  /** Where prompt chunks run when the package allows the kernels: default 'wasm'. */
  prefill?: 'wasm' | 'graph'
  /**
   * A package split into stages: 'stages' (default) runs each stage apart, all in this
   * process (the front and stages Workers run); 'whole' runs it as one model.
   */
  pipeline?: 'stages' | 'whole'
  /**
   * A package split into stages runs them elsewhere (Workers: a Durable Object per stage): the
   * links to its stages, in plan order. The front then reads none of the weights.
   */
  stageLinks?: (manifest: Manifest) => StageApi[]
  /**
   * With `stageLinks`: who runs a forward pass through the stages (Workers: the stage host, next
   * to them, one call from the front per pass); default the front, one call per stage.
   */
  stagePass?: (manifest: Manifest) => StagePass
}

/**
 * A package handle (loader.ts `openPackage`) that can run in the kernels is streamed into them
 * (no second copy of the weights during the load); otherwise it is read whole first.
 */
export async function loadModel(
  pkg: LoadedPackage | PackageHandle,
  options: ModelOptions = {},
): Promise<ForwardModel> {
  const allowed = options.decoder !== false && options.prefill !== 'graph'
  if ('stream' in pkg) {
    if (allowed && pkg.manifest.pipeline && options.pipeline !== 'whole') {
      if (!options.stageLinks) return loadPipelineInProcess(pkg, { kvFormat: options.kvFormat })
      const model = new PipelineModel(
        pkg.manifest,
        options.stageLinks(pkg.manifest),
        options.stagePass?.(pkg.manifest),
      )
      await model.refresh() // every stage loads now, side by side; a failure names its stage
      return model
    }
    if (allowed && KernelModel.unsupported(pkg.manifest) === undefined)
      return streamKernelModel(pkg, undefined, { kvFormat: options.kvFormat })
    pkg = await pkg.load()
  }
  const kernels = allowed && KernelModel.unsupported(pkg) === undefined
  return kernels ? KernelModel.load(pkg, options) : QwenModel.load(pkg, options)
}
