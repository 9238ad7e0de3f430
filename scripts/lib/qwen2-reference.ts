/**
 * The Qwen2 decoder's arithmetic in plain TypeScript (transformers' Qwen2 with eager attention):
 * RMSNorm with `rms_norm_eps`, rotate-half RoPE with `rope_theta`, grouped-query causal
 * attention, the SiLU-gated MLP, residuals, the final norm. Slow and obvious on purpose: it is
 * the one yardstick for the ONNX graphs (tests), the model toolchain's decoder check and the
 * engine's own decoder. Each weight matrix is a function (`Linear`), so the same blocks run on
 * float weights, on a q8 graph's tensors with or without its activation quantization, and on
 * any other format.
 */
import type { Qwen2Config } from '../../src/format/index.ts'

/** x [n, K] → [n, N]: one weight matrix (and its bias) applied to n rows. */
export type Linear = (x: Float32Array, n: number) => Float32Array

export interface ReferenceLayer {
  /** RMSNorm weight before attention: hidden values. */
  inputNorm: Float32Array
  q: Linear
  k: Linear
  v: Linear
  o: Linear
  /** RMSNorm weight before the MLP. */
  postNorm: Float32Array
  gate: Linear
  up: Linear
  down: Linear
}

export type ReferenceConfig = Pick<
  Qwen2Config,
  | 'hidden_size'
  | 'num_attention_heads'
  | 'num_key_value_heads'
  | 'head_dim'
  | 'rms_norm_eps'
  | 'rope_theta'
>

/** Keys and values per layer, each [kv heads, length, head_dim]. */
export interface ReferenceCache {
  length: number
  key: Float32Array[]
  value: Float32Array[]
}

export function headDimOf(
  c: Pick<Qwen2Config, 'head_dim' | 'hidden_size' | 'num_attention_heads'>,
): number {
  return c.head_dim ?? c.hidden_size / c.num_attention_heads
}

/**
 * One layer's attention block on the residual stream `x` ([n, H]: n new tokens after the p
 * cached ones, whose keys and values are [kv heads, p, head_dim]). Returns what it adds to the
 * residual stream ([n, H], o_proj's result) and the keys and values with the new rows
 * ([kv heads, p + n, head_dim], what the graph outputs as present.*).
 */
export function attentionBlock(
  layer: ReferenceLayer,
  c: ReferenceConfig,
  x: Float32Array,
  n: number,
  pastKey: Float32Array,
  pastValue: Float32Array,
): { out: Float32Array; key: Float32Array; value: Float32Array } {
  const nh = c.num_attention_heads
  const kvh = c.num_key_value_heads
  const hd = headDimOf(c)
  const half = hd / 2
  const p = pastKey.length / (kvh * hd)
  const t = p + n
  const xn = rmsNorm(x, n, layer.inputNorm, c.rms_norm_eps)
  const q = layer.q(xn, n) // [n, nh * hd]
  const k = layer.k(xn, n) // [n, kv * hd]
  const v = layer.v(xn, n)
  // rotate-half RoPE at positions p … p + n − 1: x * cos + concat(−x2, x1) * sin; the angle in
  // float32 as the graph's (position x inv_freq) product
  const invFreq = Float32Array.from({ length: half }, (_, j) => 1 / c.rope_theta ** (j / half))
  const rope = (y: Float32Array, heads: number) => {
    for (let i = 0; i < n; i++)
      for (let j = 0; j < half; j++) {
        const angle = Math.fround((p + i) * invFreq[j])
        const cs = Math.cos(angle)
        const sn = Math.sin(angle)
        for (let h = 0; h < heads; h++) {
          const at = (i * heads + h) * hd
          const a = y[at + j]
          const b = y[at + j + half]
          y[at + j] = a * cs - b * sn
          y[at + j + half] = b * cs + a * sn
        }
      }
  }
  rope(q, nh)
  rope(k, kvh)

  const key = new Float32Array(kvh * t * hd)
  const value = new Float32Array(kvh * t * hd)
  for (let g = 0; g < kvh; g++) {
    key.set(pastKey.subarray(g * p * hd, (g + 1) * p * hd), g * t * hd)
    value.set(pastValue.subarray(g * p * hd, (g + 1) * p * hd), g * t * hd)
    for (let i = 0; i < n; i++) {
      key.set(k.subarray((i * kvh + g) * hd, (i * kvh + g + 1) * hd), (g * t + p + i) * hd)
      value.set(v.subarray((i * kvh + g) * hd, (i * kvh + g + 1) * hd), (g * t + p + i) * hd)
    }
  }

  const ctx = new Float32Array(n * nh * hd)
  const scores = new Float64Array(t)
  const group = nh / kvh
  for (let i = 0; i < n; i++)
    for (let h = 0; h < nh; h++) {
      const g = Math.floor(h / group) // transformers' repeat_kv
      const qRow = (i * nh + h) * hd
      const visible = p + i + 1 // causal: keys 0 … p + i
      let max = -Infinity
      for (let j = 0; j < visible; j++) {
        let dot = 0
        for (let e = 0; e < hd; e++) dot += q[qRow + e] * key[(g * t + j) * hd + e]
        scores[j] = dot / Math.sqrt(hd)
        if (scores[j] > max) max = scores[j]
      }
      let sum = 0
      for (let j = 0; j < visible; j++) sum += scores[j] = Math.exp(scores[j] - max)
      for (let e = 0; e < hd; e++) {
        let acc = 0
        for (let j = 0; j < visible; j++) acc += scores[j] * value[(g * t + j) * hd + e]
        ctx[qRow + e] = acc / sum
      }
    }
  return { out: layer.o(ctx, n), key, value }
}

/** One layer's MLP on the residual stream `x` [n, H]: what it adds to it (down_proj's result). */
export function mlpBlock(
  layer: ReferenceLayer,
  c: Pick<ReferenceConfig, 'rms_norm_eps'>,
  x: Float32Array,
  n: number,
): Float32Array {
  const y = rmsNorm(x, n, layer.postNorm, c.rms_norm_eps)
  const gate = layer.gate(y, n)
  const up = layer.up(y, n)
  for (let i = 0; i < gate.length; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i]
  return layer.down(gate, n)
}

/**
 * Every layer and the final norm on the embeddings `x` [n, H] of n tokens after `cache.length`
 * cached ones: the final hidden states [n, H] and a new cache (the one given is not changed).
 */
export function referenceForward(
  layers: readonly ReferenceLayer[],
  finalNorm: Float32Array,
  c: ReferenceConfig,
  x: Float32Array,
  n: number,
  cache: ReferenceCache,
): { hidden: Float32Array; cache: ReferenceCache } {
  const r = Float32Array.from(x)
  const next = { length: cache.length + n, key: [] as Float32Array[], value: [] as Float32Array[] }
  layers.forEach((layer, i) => {
    const a = attentionBlock(layer, c, r, n, cache.key[i], cache.value[i])
    next.key.push(a.key)
    next.value.push(a.value)
    for (let j = 0; j < r.length; j++) r[j] += a.out[j]
    const down = mlpBlock(layer, c, r, n)
    for (let j = 0; j < r.length; j++) r[j] += down[j]
  })
  return { hidden: rmsNorm(r, n, finalNorm, c.rms_norm_eps), cache: next }
}

/** An empty cache for `layers` layers. */
export function emptyReferenceCache(layers: number): ReferenceCache {
  return {
    length: 0,
    key: Array.from({ length: layers }, () => new Float32Array(0)),
    value: Array.from({ length: layers }, () => new Float32Array(0)),
  }
}

export function rmsNorm(
  x: Float32Array,
  rows: number,
  weight: Float32Array,
  eps: number,
): Float32Array {
  const H = x.length / rows
  const out = new Float32Array(x.length)
  for (let r = 0; r < rows; r++) {
    let ss = 0
    for (let i = 0; i < H; i++) ss += x[r * H + i] ** 2
    const inv = 1 / Math.sqrt(ss / H + eps)
    for (let i = 0; i < H; i++) out[r * H + i] = x[r * H + i] * inv * weight[i]
  }
  return out
}
