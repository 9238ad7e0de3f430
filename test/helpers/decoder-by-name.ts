/**
 * Test-only: the decoder weights of a package made by this project's generator, found by
 * initializer name (model.layers.{l}.self_attn.q_proj.weight_quantized, ...). The package's own
 * `decoder` entry (found structurally by model:prepare) is checked against these.
 */
import {
  decodeModel,
  tensorRawData,
  tensorToFloat32,
  type TensorProto,
} from '../../scripts/lib/onnx/index.ts'
import type { DecoderMatrixData, DecoderWeights } from '../../src/format/index.ts'
import type { LoadedPackage } from '../../src/engine/package/model-package.ts'

export function decoderWeightsByName(pkg: LoadedPackage): DecoderWeights {
  const model = decodeModel(pkg.graph)
  const byName = new Map<string, TensorProto>()
  for (const t of model.graph?.initializer ?? []) byName.set(t.name ?? '', t)
  const files = new Map(pkg.externalData.map((f) => [f.path, f.data]))
  const read = (loc: string) => {
    const f = files.get(loc)
    if (!f) throw new Error(`no external data ${loc}`)
    return f
  }
  const get = (name: string) => {
    const t = byName.get(name)
    if (!t) throw new Error(`no initializer ${name}`)
    return t
  }
  const f32 = (name: string) => Float32Array.from(tensorToFloat32(get(name), read))
  const matrix = (prefix: string, bias: boolean): DecoderMatrixData => {
    const w = get(`${prefix}.weight_quantized`)
    const dims = (w.dims ?? []).map(Number)
    return {
      k: dims[0],
      n: dims[1],
      weight: tensorRawData(w, read),
      signed: w.data_type === 3,
      scale: f32(`${prefix}.weight_scale`),
      zeroPoint: tensorRawData(get(`${prefix}.weight_zero_point`), read),
      ...(bias && { bias: f32(`${prefix}.bias`) }),
    }
  }
  const layers = []
  for (let l = 0; byName.has(`model.layers.${l}.input_layernorm.weight`); l++) {
    const p = `model.layers.${l}`
    layers.push({
      inputNorm: f32(`${p}.input_layernorm.weight`),
      q: matrix(`${p}.self_attn.q_proj`, true),
      k: matrix(`${p}.self_attn.k_proj`, true),
      v: matrix(`${p}.self_attn.v_proj`, true),
      o: matrix(`${p}.self_attn.o_proj`, false),
      postNorm: f32(`${p}.post_attention_layernorm.weight`),
      gate: matrix(`${p}.mlp.gate_proj`, false),
      up: matrix(`${p}.mlp.up_proj`, false),
      down: matrix(`${p}.mlp.down_proj`, false),
    })
  }
  return { layers, finalNorm: f32('model.norm.weight') }
}
