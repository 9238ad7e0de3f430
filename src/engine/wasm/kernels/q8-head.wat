;; The lm_head of a q8 model package (manifest `head`, format 'q8-rows'), WASM SIMD 128.
;; Built by `npm run build:kernels` into q8-head.wasm and q8-head-wasm.ts; see head.ts.
;;
;; Weights: `vocab` rows of `stride` int8 (stride a multiple of 32, zero padded), a zero point
;; zp[v] (int8) and a scale[v] (f32) per row. Activations: int16, one row of `stride` per
;; vector (zero padded), with their sum and scale. For vector j and weight row v:
;;
;;   out[j * ldo + v] = (Σ_k w[v, k] · x[j, k]  −  zp[v] · Σ_k x[j, k]) · scale[v] · xscale[j]
;;
;; The dot product is exact in int32 when |x| ≤ (2^31 − 1) / (128 · stride) (head.ts picks the
;; activation scale so). Rows are visited once, in order: the weights stream through the cache
;; and are read once per call however many vectors it scores.
(module
  (memory (export "memory") 1)

  ;; Horizontal sum of an i32x4 accumulator, corrected and scaled, stored as out[j * ldo + v].
  (func $store
    (param $acc v128) (param $j i32) (param $v i32)
    (param $zp i32) (param $scale i32) (param $sumx i32) (param $xscale i32)
    (param $out i32) (param $ldo i32)
    (f32.store
      (i32.add (local.get $out)
        (i32.shl (i32.add (i32.mul (local.get $j) (local.get $ldo)) (local.get $v)) (i32.const 2)))
      (f32.mul
        (f32.mul
          (f32.sub
            (f32.convert_i32_s
              (i32.add
                (i32.add (i32x4.extract_lane 0 (local.get $acc)) (i32x4.extract_lane 1 (local.get $acc)))
                (i32.add (i32x4.extract_lane 2 (local.get $acc)) (i32x4.extract_lane 3 (local.get $acc)))))
            (f32.mul
              (f32.convert_i32_s (i32.load8_s (i32.add (local.get $zp) (local.get $v))))
              (f32.load (i32.add (local.get $sumx) (i32.shl (local.get $j) (i32.const 2))))))
          (f32.load (i32.add (local.get $scale) (i32.shl (local.get $v) (i32.const 2)))))
        (f32.load (i32.add (local.get $xscale) (i32.shl (local.get $j) (i32.const 2)))))))

  ;; Rows [v0, v1) against `n` vectors at x (each `stride` int16), one vector at a time per
  ;; row: the row stays in L1 while the vectors are scored. 32 weights per inner iteration,
  ;; two accumulators.
  (func (export "rows")
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32) (param $n i32)
    (param $out i32) (param $ldo i32)
    (local $v i32) (local $row i32) (local $j i32) (local $xj i32) (local $k i32) (local $xk i32)
    (local $a v128) (local $b v128) (local $w0 v128) (local $w1 v128)
    (local.set $v (local.get $v0))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $v) (local.get $v1)))
        (local.set $row (i32.add (local.get $w) (i32.mul (local.get $v) (local.get $stride))))
        (local.set $j (i32.const 0))
        (block $vectors_done
          (loop $vectors
            (br_if $vectors_done (i32.ge_u (local.get $j) (local.get $n)))
            (local.set $xj
              (i32.add (local.get $x)
                (i32.shl (i32.mul (local.get $j) (local.get $stride)) (i32.const 1))))
            (local.set $a (v128.const i32x4 0 0 0 0))
            (local.set $b (v128.const i32x4 0 0 0 0))
            (local.set $k (i32.const 0))
            (block $k_done
              (loop $k_loop
                (br_if $k_done (i32.ge_u (local.get $k) (local.get $stride)))
                (local.set $w0 (v128.load (i32.add (local.get $row) (local.get $k))))
                (local.set $w1 (v128.load offset=16 (i32.add (local.get $row) (local.get $k))))
                (local.set $xk (i32.add (local.get $xj) (i32.shl (local.get $k) (i32.const 1))))
                (local.set $a
                  (i32x4.add (local.get $a)
                    (i32x4.dot_i16x8_s
                      (i16x8.extend_low_i8x16_s (local.get $w0)) (v128.load (local.get $xk)))))
                (local.set $b
                  (i32x4.add (local.get $b)
                    (i32x4.dot_i16x8_s
                      (i16x8.extend_high_i8x16_s (local.get $w0))
                      (v128.load offset=16 (local.get $xk)))))
                (local.set $a
                  (i32x4.add (local.get $a)
                    (i32x4.dot_i16x8_s
                      (i16x8.extend_low_i8x16_s (local.get $w1))
                      (v128.load offset=32 (local.get $xk)))))
                (local.set $b
                  (i32x4.add (local.get $b)
                    (i32x4.dot_i16x8_s
                      (i16x8.extend_high_i8x16_s (local.get $w1))
                      (v128.load offset=48 (local.get $xk)))))
                (local.set $k (i32.add (local.get $k) (i32.const 32)))
                (br $k_loop)))
            (call $store
              (i32x4.add (local.get $a) (local.get $b)) (local.get $j) (local.get $v)
              (local.get $zp) (local.get $scale) (local.get $sumx) (local.get $xscale)
              (local.get $out) (local.get $ldo))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $vectors)))
        (local.set $v (i32.add (local.get $v) (i32.const 1)))
        (br $rows)))
  )

  ;; Rows [v0, v1) against exactly 4 vectors at x: each 16 weights are loaded and widened once
  ;; for all four (about 1.2x faster than `rows` with n = 4: the batch is compute bound).
  (func (export "rows4")
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32)
    (param $out i32) (param $ldo i32)
    (local $v i32) (local $row i32) (local $k i32) (local $wk i32)
    (local $x0 i32) (local $x1 i32) (local $x2 i32) (local $x3 i32) (local $step i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $lo v128) (local $hi v128) (local $wv v128)
    (local.set $step (i32.shl (local.get $stride) (i32.const 1)))
    (local.set $v (local.get $v0))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $v) (local.get $v1)))
        (local.set $row (i32.add (local.get $w) (i32.mul (local.get $v) (local.get $stride))))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $k (i32.const 0))
        (block $k_done
          (loop $k_loop
            (br_if $k_done (i32.ge_u (local.get $k) (local.get $stride)))
            (local.set $wv (v128.load (i32.add (local.get $row) (local.get $k))))
            (local.set $lo (i16x8.extend_low_i8x16_s (local.get $wv)))
            (local.set $hi (i16x8.extend_high_i8x16_s (local.get $wv)))
            (local.set $x0 (i32.add (local.get $x) (i32.shl (local.get $k) (i32.const 1))))
            (local.set $x1 (i32.add (local.get $x0) (local.get $step)))
            (local.set $x2 (i32.add (local.get $x1) (local.get $step)))
            (local.set $x3 (i32.add (local.get $x2) (local.get $step)))
            (local.set $a0
              (i32x4.add (local.get $a0)
                (i32x4.add
                  (i32x4.dot_i16x8_s (local.get $lo) (v128.load (local.get $x0)))
                  (i32x4.dot_i16x8_s (local.get $hi) (v128.load offset=16 (local.get $x0))))))
            (local.set $a1
              (i32x4.add (local.get $a1)
                (i32x4.add
                  (i32x4.dot_i16x8_s (local.get $lo) (v128.load (local.get $x1)))
                  (i32x4.dot_i16x8_s (local.get $hi) (v128.load offset=16 (local.get $x1))))))
            (local.set $a2
              (i32x4.add (local.get $a2)
                (i32x4.add
                  (i32x4.dot_i16x8_s (local.get $lo) (v128.load (local.get $x2)))
                  (i32x4.dot_i16x8_s (local.get $hi) (v128.load offset=16 (local.get $x2))))))
            (local.set $a3
              (i32x4.add (local.get $a3)
                (i32x4.add
                  (i32x4.dot_i16x8_s (local.get $lo) (v128.load (local.get $x3)))
                  (i32x4.dot_i16x8_s (local.get $hi) (v128.load offset=16 (local.get $x3))))))
            (local.set $k (i32.add (local.get $k) (i32.const 16)))
            (br $k_loop)))
        (call $store (local.get $a0) (i32.const 0) (local.get $v) (local.get $zp)
          (local.get $scale) (local.get $sumx) (local.get $xscale) (local.get $out) (local.get $ldo))
        (call $store (local.get $a1) (i32.const 1) (local.get $v) (local.get $zp)
          (local.get $scale) (local.get $sumx) (local.get $xscale) (local.get $out) (local.get $ldo))
        (call $store (local.get $a2) (i32.const 2) (local.get $v) (local.get $zp)
          (local.get $scale) (local.get $sumx) (local.get $xscale) (local.get $out) (local.get $ldo))
        (call $store (local.get $a3) (i32.const 3) (local.get $v) (local.get $zp)
          (local.get $scale) (local.get $sumx) (local.get $xscale) (local.get $out) (local.get $ldo))
        (local.set $v (i32.add (local.get $v) (i32.const 1)))
        (br $rows)))
  )
  ;; Attention scores of one query head: out[t] = Σ_d q[d] · k[t·dim + d], t < n. dim is a
  ;; multiple of 16; q, k and out are f32.
  (func (export "dots")
    (param $q i32) (param $k i32) (param $n i32) (param $dim i32) (param $out i32)
    (local $t i32) (local $d i32) (local $row i32) (local $qd i32) (local $bytes i32)
    (local $a v128) (local $b v128) (local $c v128) (local $e v128)
    (local.set $bytes (i32.shl (local.get $dim) (i32.const 2)))
    (local.set $row (local.get $k))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $t) (local.get $n)))
        (local.set $a (v128.const i32x4 0 0 0 0))
        (local.set $b (v128.const i32x4 0 0 0 0))
        (local.set $c (v128.const i32x4 0 0 0 0))
        (local.set $e (v128.const i32x4 0 0 0 0))
        (local.set $d (i32.const 0))
        (block $d_done
          (loop $d_loop
            (br_if $d_done (i32.ge_u (local.get $d) (local.get $bytes)))
            (local.set $qd (i32.add (local.get $q) (local.get $d)))
            (local.set $a (f32x4.add (local.get $a)
              (f32x4.mul (v128.load (local.get $qd))
                (v128.load (i32.add (local.get $row) (local.get $d))))))
            (local.set $b (f32x4.add (local.get $b)
              (f32x4.mul (v128.load offset=16 (local.get $qd))
                (v128.load offset=16 (i32.add (local.get $row) (local.get $d))))))
            (local.set $c (f32x4.add (local.get $c)
              (f32x4.mul (v128.load offset=32 (local.get $qd))
                (v128.load offset=32 (i32.add (local.get $row) (local.get $d))))))
            (local.set $e (f32x4.add (local.get $e)
              (f32x4.mul (v128.load offset=48 (local.get $qd))
                (v128.load offset=48 (i32.add (local.get $row) (local.get $d))))))
            (local.set $d (i32.add (local.get $d) (i32.const 64)))
            (br $d_loop)))
        (local.set $a (f32x4.add (f32x4.add (local.get $a) (local.get $b))
          (f32x4.add (local.get $c) (local.get $e))))
        (f32.store (i32.add (local.get $out) (i32.shl (local.get $t) (i32.const 2)))
          (f32.add
            (f32.add (f32x4.extract_lane 0 (local.get $a)) (f32x4.extract_lane 1 (local.get $a)))
            (f32.add (f32x4.extract_lane 2 (local.get $a)) (f32x4.extract_lane 3 (local.get $a)))))
        (local.set $row (i32.add (local.get $row) (local.get $bytes)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $rows)))
  )

  ;; The weighted sum of one head's values: out[d] = Σ_t p[t] · v[t·dim + d], t < n. dim is a
  ;; multiple of 16; 16 values at a time, each a cache line of every row.
  (func (export "mix")
    (param $p i32) (param $v i32) (param $n i32) (param $dim i32) (param $out i32)
    (local $t i32) (local $d i32) (local $at i32) (local $bytes i32) (local $w v128)
    (local $a v128) (local $b v128) (local $c v128) (local $e v128)
    (local.set $bytes (i32.shl (local.get $dim) (i32.const 2)))
    (block $done
      (loop $chunks
        (br_if $done (i32.ge_u (local.get $d) (local.get $bytes)))
        (local.set $a (v128.const i32x4 0 0 0 0))
        (local.set $b (v128.const i32x4 0 0 0 0))
        (local.set $c (v128.const i32x4 0 0 0 0))
        (local.set $e (v128.const i32x4 0 0 0 0))
        (local.set $at (i32.add (local.get $v) (local.get $d)))
        (local.set $t (i32.const 0))
        (block $t_done
          (loop $t_loop
            (br_if $t_done (i32.ge_u (local.get $t) (local.get $n)))
            (local.set $w
              (f32x4.splat (f32.load (i32.add (local.get $p) (i32.shl (local.get $t) (i32.const 2))))))
            (local.set $a (f32x4.add (local.get $a) (f32x4.mul (local.get $w) (v128.load (local.get $at)))))
            (local.set $b (f32x4.add (local.get $b)
              (f32x4.mul (local.get $w) (v128.load offset=16 (local.get $at)))))
            (local.set $c (f32x4.add (local.get $c)
              (f32x4.mul (local.get $w) (v128.load offset=32 (local.get $at)))))
            (local.set $e (f32x4.add (local.get $e)
              (f32x4.mul (local.get $w) (v128.load offset=48 (local.get $at)))))
            (local.set $at (i32.add (local.get $at) (local.get $bytes)))
            (local.set $t (i32.add (local.get $t) (i32.const 1)))
            (br $t_loop)))
        (local.set $at (i32.add (local.get $out) (local.get $d)))
        (v128.store (local.get $at) (local.get $a))
        (v128.store offset=16 (local.get $at) (local.get $b))
        (v128.store offset=32 (local.get $at) (local.get $c))
        (v128.store offset=48 (local.get $at) (local.get $e))
        (local.set $d (i32.add (local.get $d) (i32.const 64)))
        (br $chunks)))
  )
  ;; The gated MLP activation: out[i] = silu(g[i]) · u[i] = g / (1 + e^−g) · u, i < n (a multiple
  ;; of 4). e^x as Cephes' expf: x = k·ln2 + r, e^r by a degree-7 polynomial (relative error
  ;; about 1e-7), times 2^k built in the exponent bits; x is clamped to [−87.3, 88.7].
  (func (export "silu_mul")
    (param $g i32) (param $u i32) (param $n i32) (param $out i32)
    (local $i i32) (local $x v128) (local $t v128) (local $k v128) (local $r v128) (local $y v128)
    (local.set $n (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $x (v128.load (i32.add (local.get $g) (local.get $i))))
        (local.set $t
          (f32x4.min (f32x4.splat (f32.const 88.7))
            (f32x4.max (f32x4.splat (f32.const -87.3)) (f32x4.neg (local.get $x)))))
        (local.set $k
          (f32x4.floor
            (f32x4.add (f32x4.mul (local.get $t) (f32x4.splat (f32.const 1.44269504088896341)))
              (f32x4.splat (f32.const 0.5)))))
        (local.set $r
          (f32x4.sub
            (f32x4.sub (local.get $t) (f32x4.mul (local.get $k) (f32x4.splat (f32.const 0.693359375))))
            (f32x4.mul (local.get $k) (f32x4.splat (f32.const -2.12194440e-4)))))
        (local.set $y (f32x4.splat (f32.const 1.9875691500e-4)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $r)) (f32x4.splat (f32.const 1.3981999507e-3))))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $r)) (f32x4.splat (f32.const 8.3334519073e-3))))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $r)) (f32x4.splat (f32.const 4.1665795894e-2))))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $r)) (f32x4.splat (f32.const 1.6666665459e-1))))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $r)) (f32x4.splat (f32.const 5.0000001201e-1))))
        (local.set $y
          (f32x4.add
            (f32x4.add (f32x4.mul (local.get $y) (f32x4.mul (local.get $r) (local.get $r))) (local.get $r))
            (f32x4.splat (f32.const 1))))
        ;; × 2^k
        (local.set $y
          (f32x4.mul (local.get $y)
            (i32x4.shl
              (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $k)) (i32x4.splat (i32.const 127)))
              (i32.const 23))))
        (v128.store (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (local.get $x) (f32x4.add (f32x4.splat (f32.const 1)) (local.get $y)))
            (v128.load (i32.add (local.get $u) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $each)))
  )
)
