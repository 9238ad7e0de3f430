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
)
