/**
 * A plain TypeScript forward pass of the Qwen2 causal LM (transformers' Qwen2ForCausalLM,
 * eager attention), batch 1, with a KV cache. Slow and obvious on purpose: it is the yardstick
 * the ONNX graphs are checked against.
 *
 * Weights are Hugging Face layout (`[out, in]` linear weights, `[vocab, hidden]` embedding),
 * as `synthesizeWeights` returns them (for q8/q4: the dequantized values the graph uses).
 */
import type { ModelDims } from '../../scripts/lib/model-presets.ts'
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
}

/** Keys and values of every cached position: per layer, [kv_heads][position][head_dim]. */
export interface KvCache {
  length: number
  keys: Float32Array[][][] // [layer][kv_head][position] → [head_dim]
  values: Float32Array[][][]
}

export class Qwen2Reference {
  private readonly invFreq: Float32Array

  constructor(
    readonly dims: ModelDims,
    private readonly weights: Weights,
    private readonly options: ReferenceOptions = {},
  ) {
    const hd = dims.headDim
    // float32, as the graph's initializer holds it
    this.invFreq = Float32Array.from(
      { length: hd / 2 },
      (_, i) => 1 / Math.pow(dims.ropeTheta, (2 * i) / hd),
    )
  }

  emptyCache(): KvCache {
    const { numLayers, numKvHeads } = this.dims
    const empty = () =>
      Array.from({ length: numLayers }, () => Array.from({ length: numKvHeads }, () => []))
    return { length: 0, keys: empty(), values: empty() }
  }

  /**
   * Run `ids` after the `cache.length` cached tokens (positions continue from there); the
   * cache is extended in place. Returns the logits of the last `keep` positions (all when
   * `keep` is 0 or undefined), one [vocab] row per position.
   */
  forward(ids: number[], cache: KvCache, keep = 0): Float32Array[] {
    const d = this.dims
    const W = (name: string) => {
      const w = this.weights.get(name)
      if (!w) throw new Error(`missing weight ${name}`)
      return w
    }
    const embed = W('model.embed_tokens.weight') // [V, H]
    const row = (id: number) => embed.slice(id * d.hiddenSize, (id + 1) * d.hiddenSize)
    let h: Float32Array[] = ids.map(row) // [s][H]
    const positions = ids.map((_, i) => cache.length + i)

    for (let l = 0; l < d.numLayers; l++) {
      const p = `model.layers.${l}`
      const x = h.map((row) => rmsNorm(row, W(`${p}.input_layernorm.weight`), d.rmsNormEps))
      const bias = (n: string) => (d.qkvBias ? W(`${p}.self_attn.${n}.bias`) : undefined)
      const q = this.linear(x, `${p}.self_attn.q_proj.weight`, bias('q_proj')) // [s][nh*hd]
      const k = this.linear(x, `${p}.self_attn.k_proj.weight`, bias('k_proj')) // [s][kv*hd]
      const v = this.linear(x, `${p}.self_attn.v_proj.weight`, bias('v_proj')) // [s][kv*hd]
      for (let i = 0; i < ids.length; i++)
        for (let kh = 0; kh < d.numKvHeads; kh++) {
          const at = kh * d.headDim
          cache.keys[l][kh].push(this.rope(k[i].slice(at, at + d.headDim), positions[i]))
          cache.values[l][kh].push(v[i].slice(at, at + d.headDim))
        }
      const attn = q.map((qi, i) => this.attend(qi, positions[i], cache.keys[l], cache.values[l]))
      const o = this.linear(attn, `${p}.self_attn.o_proj.weight`)
      h = h.map((row, i) => add(row, o[i]))

      const y = h.map((row) =>
        rmsNorm(row, W(`${p}.post_attention_layernorm.weight`), d.rmsNormEps),
      )
      const gate = this.linear(y, `${p}.mlp.gate_proj.weight`) // [s][I]
      const up = this.linear(y, `${p}.mlp.up_proj.weight`) // [s][I]
      const act = gate.map((g, i) => g.map((gv, j) => (gv / (1 + Math.exp(-gv))) * up[i][j]))
      const down = this.linear(act, `${p}.mlp.down_proj.weight`)
      h = h.map((row, i) => add(row, down[i]))
    }
    cache.length += ids.length

    const kept = keep > 0 ? h.slice(-keep) : h
    const normed = kept.map((row) => rmsNorm(row, W('model.norm.weight'), d.rmsNormEps))
    return this.linear(normed, d.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight')
  }

  /** rotate-half RoPE at `pos`: x * cos + concat(-x2, x1) * sin. */
  private rope(x: Float32Array, pos: number): Float32Array {
    const half = x.length / 2
    const out = new Float32Array(x.length)
    for (let j = 0; j < half; j++) {
      const angle = Math.fround(pos * this.invFreq[j]) // float32, as in the graph
      const c = Math.cos(angle)
      const s = Math.sin(angle)
      out[j] = x[j] * c - x[j + half] * s
      out[j + half] = x[j + half] * c + x[j] * s
    }
    return out
  }

  /** One query row (all heads) against the cache up to and including its own position. */
  private attend(q: Float32Array, pos: number, keys: Float32Array[][], values: Float32Array[][]) {
    const { numHeads, numKvHeads, headDim } = this.dims
    const group = numHeads / numKvHeads
    const out = new Float32Array(numHeads * headDim)
    const scale = 1 / Math.sqrt(headDim)
    for (let hIdx = 0; hIdx < numHeads; hIdx++) {
      const kh = Math.floor(hIdx / group) // transformers' repeat_kv: head h reads kv head h // g
      const qh = this.rope(q.subarray(hIdx * headDim, (hIdx + 1) * headDim), pos)
      const scores = new Float64Array(pos + 1) // causal: keys 0..pos
      let max = -Infinity
      for (let j = 0; j <= pos; j++) {
        let dot = 0
        for (let e = 0; e < headDim; e++) dot += qh[e] * keys[kh][j][e]
        scores[j] = dot * scale
        if (scores[j] > max) max = scores[j]
      }
      let sum = 0
      for (let j = 0; j <= pos; j++) sum += scores[j] = Math.exp(scores[j] - max)
      for (let j = 0; j <= pos; j++) {
        const pj = scores[j] / sum
        for (let e = 0; e < headDim; e++) out[hIdx * headDim + e] += pj * values[kh][j][e]
      }
    }
    return out
  }

  /** rows [m][K] · W[N, K]ᵀ (+ bias) → [m][N], W the weight called `name`. */
  private linear(rows: Float32Array[], name: string, bias?: Float32Array): Float32Array[] {
    const q8 = this.options.q8Codes?.get(name)
    if (q8) return linearU8(rows, q8, bias)
    const w = this.weights.get(name)
    if (!w) throw new Error(`missing weight ${name}`)
    const K = rows[0].length
    const N = w.length / K
    return rows.map((x) => {
      const y = new Float32Array(N)
      for (let n = 0; n < N; n++) {
        let acc = 0
        const off = n * K
        for (let k = 0; k < K; k++) acc += x[k] * w[off + k]
        y[n] = acc + (bias ? bias[n] : 0)
      }
      return y
    })
  }
}

// ---------------------------------------------------------------- helpers

function rmsNorm(x: Float32Array, weight: Float32Array, eps: number): Float32Array {
  let ss = 0
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i]
  const inv = 1 / Math.sqrt(ss / x.length + eps)
  return x.map((v, i) => v * inv * weight[i])
}

function add(a: Float32Array, b: Float32Array): Float32Array {
  return a.map((v, i) => v + b[i])
}

/**
 * ORT DynamicQuantizeMatMul with uint8 weights: A is quantized per tensor (all rows together):
 * scale = (max(0, max) - min(0, min)) / 255, zero point = round(-min / scale), q = round(x /
 * scale) + zp clamped to [0, 255]; then y[n] = float(Σ (qa - za)(qb - zb[n])) *
 * float(scale_a * scale_b[n]) + bias[n], all in float32.
 */
function linearU8(rows: Float32Array[], w: Q8Codes, bias?: Float32Array): Float32Array[] {
  const K = rows[0].length
  const N = w.scale.length
  const all = new Float32Array(rows.length * K)
  rows.forEach((x, r) => all.set(x, r * K))
  const { centered, scale: scaleA } = quantizeLikeDynamicQuantizeLinear(all) // one scale per run
  return rows.map((_, r) => {
    const qa = centered.subarray(r * K, (r + 1) * K) // qa - za
    const y = new Float32Array(N)
    for (let n = 0; n < N; n++) {
      let acc = 0
      const off = n * K
      for (let k = 0; k < K; k++) acc += qa[k] * w.codes[off + k]
      const multiplier = Math.fround(scaleA * w.scale[n])
      y[n] = Math.fround(Math.fround(acc * multiplier) + (bias ? bias[n] : 0))
    }
    return y
  })
}
