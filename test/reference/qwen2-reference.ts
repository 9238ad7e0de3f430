/**
 * The Qwen2 causal LM in plain TypeScript for the tests: the toolchain's one reference
 * arithmetic (scripts/lib/qwen2-reference.ts: the same blocks the decoder check uses) on the
 * generator's weights, batch 1, with a KV cache, plus the embedding lookup and the lm_head.
 *
 * Weights are Hugging Face layout (`[out, in]` linear weights, `[vocab, hidden]` embedding),
 * as `synthesizeWeights` returns them (for q8/q4: the dequantized values the graph uses).
 */
import type { ModelDims } from '../../scripts/lib/model-presets.ts'
import {
  emptyReferenceCache,
  referenceForward,
  type Linear,
  type ReferenceCache,
  type ReferenceLayer,
} from '../../scripts/lib/qwen2-reference.ts'
import type { Q8Codes, Weights } from '../../scripts/lib/synth-weights.ts'
import { quantizeLikeDynamicQuantizeLinear } from '../../src/format/index.ts'

export interface ReferenceOptions {
  /**
   * The q8 weights' integer codes and scales (`synthesizeQ8Codes`). When given, every linear
   * layer and the lm_head quantize their input to uint8 the way ORT's DynamicQuantizeMatMul
   * does (per tensor, asymmetric, range including 0, round half to even) and multiply in
   * integers: this reproduces the q8 graph rather than approximating it.
   */
  q8Codes?: Map<string, Q8Codes>
  /**
   * Called with the input of every matrix product (`rows` rows of x), by weight name, before it
   * runs: what activation statistics (outlier channels, calibration for quantization) are
   * taken from.
   */
  observe?: (weightName: string, x: Float32Array, rows: number) => void
}

/** Keys and values of every cached position, per layer [kv_heads, length, head_dim]. */
export type KvCache = ReferenceCache

export class Qwen2Reference {
  private readonly layers: ReferenceLayer[]

  constructor(
    readonly dims: ModelDims,
    private readonly weights: Weights,
    private readonly options: ReferenceOptions = {},
  ) {
    const bias = (p: string, n: string) =>
      dims.qkvBias ? this.weight(`${p}.self_attn.${n}.bias`) : undefined
    this.layers = Array.from({ length: dims.numLayers }, (_, l) => {
      const p = `model.layers.${l}`
      return {
        inputNorm: this.weight(`${p}.input_layernorm.weight`),
        postNorm: this.weight(`${p}.post_attention_layernorm.weight`),
        q: this.linear(`${p}.self_attn.q_proj.weight`, bias(p, 'q_proj')),
        k: this.linear(`${p}.self_attn.k_proj.weight`, bias(p, 'k_proj')),
        v: this.linear(`${p}.self_attn.v_proj.weight`, bias(p, 'v_proj')),
        o: this.linear(`${p}.self_attn.o_proj.weight`),
        gate: this.linear(`${p}.mlp.gate_proj.weight`),
        up: this.linear(`${p}.mlp.up_proj.weight`),
        down: this.linear(`${p}.mlp.down_proj.weight`),
      }
    })
  }

  emptyCache(): KvCache {
    return emptyReferenceCache(this.dims.numLayers)
  }

  /**
   * Run `ids` after the `cache.length` cached tokens (positions continue from there); the
   * cache is extended in place. Returns the logits of the last `keep` positions (all when
   * `keep` is 0 or undefined), one [vocab] row per position.
   */
  forward(ids: number[], cache: KvCache, keep = 0): Float32Array[] {
    const d = this.dims
    const H = d.hiddenSize
    const embed = this.weight('model.embed_tokens.weight') // [V, H]
    const x = new Float32Array(ids.length * H)
    ids.forEach((id, i) => x.set(embed.subarray(id * H, (id + 1) * H), i * H))
    const config = {
      hidden_size: H,
      num_attention_heads: d.numHeads,
      num_key_value_heads: d.numKvHeads,
      head_dim: d.headDim,
      rms_norm_eps: d.rmsNormEps,
      rope_theta: d.ropeTheta,
    }
    const final = this.weight('model.norm.weight')
    const out = referenceForward(this.layers, final, config, x, ids.length, cache)
    Object.assign(cache, out.cache)
    const rows = keep > 0 ? Math.min(keep, ids.length) : ids.length
    const kept = out.hidden.subarray((ids.length - rows) * H)
    const head = this.linear(d.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight')
    const logits = head(kept, rows)
    const V = logits.length / rows
    return Array.from({ length: rows }, (_, r) => logits.slice(r * V, (r + 1) * V))
  }

  private weight(name: string): Float32Array {
    const w = this.weights.get(name)
    if (!w) throw new Error(`missing weight ${name}`)
    return w
  }

  /** x [n, K] · W[N, K]ᵀ (+ bias) → [n, N], W the weight called `name` (float, or its q8 codes). */
  private linear(name: string, bias?: Float32Array): Linear {
    return (x, n) => {
      this.options.observe?.(name, x, n)
      const q8 = this.options.q8Codes?.get(name)
      if (q8) return linearU8(x, n, q8, bias)
      const w = this.weight(name)
      const K = x.length / n
      const N = w.length / K
      const y = new Float32Array(n * N)
      for (let r = 0; r < n; r++)
        for (let j = 0; j < N; j++) {
          let acc = 0
          const off = j * K
          for (let k = 0; k < K; k++) acc += x[r * K + k] * w[off + k]
          y[r * N + j] = acc + (bias ? bias[j] : 0)
        }
      return y
    }
  }
}

/**
 * ORT DynamicQuantizeMatMul with uint8 weights: A is quantized per tensor (all rows together):
 * scale = (max(0, max) - min(0, min)) / 255, zero point = round(-min / scale), q = round(x /
 * scale) + zp clamped to [0, 255]; then y[n] = float(Σ (qa - za)(qb - zb[n])) *
 * float(scale_a * scale_b[n]) + bias[n], all in float32.
 */
function linearU8(x: Float32Array, rows: number, w: Q8Codes, bias?: Float32Array): Float32Array {
  const K = x.length / rows
  const N = w.scale.length
  const { centered, scale: scaleA } = quantizeLikeDynamicQuantizeLinear(x) // one scale per run
  const y = new Float32Array(rows * N)
  for (let r = 0; r < rows; r++) {
    const qa = centered.subarray(r * K, (r + 1) * K) // qa - za
    for (let n = 0; n < N; n++) {
      let acc = 0
      const off = n * K
      for (let k = 0; k < K; k++) acc += qa[k] * w.codes[off + k]
      const multiplier = Math.fround(scaleA * w.scale[n])
      y[r * N + n] = Math.fround(Math.fround(acc * multiplier) + (bias ? bias[n] : 0))
    }
  }
  return y
}
