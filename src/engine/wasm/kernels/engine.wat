;; The engine's kernels in one module, for q8 and q4 weights, decode and prefill. WASM SIMD 128,
;; in two variants built from this one source by `npm run build:kernels` (scripts/lib/kernel-variants.ts): lines
;; between `;;#if relaxed` and `;;#else` (or `;;#end`) go only into engine-relaxed.wasm (relaxed
;; SIMD), lines between `;;#if simd128` or that `;;#else` and `;;#end` only into
;; engine-simd128.wasm. Both have the same exports and give the same results bit for bit (the
;; integer sums are exact, the f32 epilogue is shared). A line `;;#tile <name>` is a generated
;; function (scripts/lib/kernel-tiles.ts: tiles that differ only in how many rows they score,
;; one function per count); `npm run build:kernels -- --print relaxed` prints a variant's whole
;; source.
;;
;; ABI. One linear memory (weights, scratch and the KV arena all live in it); every pointer is a
;; byte offset; every matrix result goes to out[j * ldo + v] (f32) for activation row j and
;; weight row v. Formats (byte offsets documented in src/format/ and wasm/activations.ts): q8 rows (q8-rows.ts: int8
;; rows of `stride`, a multiple of 32; per row zp int8 and scale f32) with 'a16-row'
;; activations (activations.ts: int16 rows of `stride`, sum f32 and scale f32 per row); q4
;; (q4-b32.ts: 'q4-b32', kb blocks a row, a multiple of 4, in groups of 4 of 84 bytes: nibbles,
;; scales f32, zero points u8; placed in panels of 4 rows whose groups are interleaved: row v's
;; group g at w + 84·kb·(v >> 2) + 336·g + 84·(v & 3)) with 'a8-b32' activations (activations.ts:
;; groups of 160 bytes: int8 values in the weights' order, scales f32, sums i32; row j at
;; x + 40·kb·j). A16 activation row j is at x + 2·stride·j.
;;
;;   rows(w, stride, zp, scale, v0, v1, x, sumx, xscale, n, out, ldo)   q8 · n a16 rows (decode)
;;   rows4(w, stride, zp, scale, v0, v1, x, sumx, xscale, out, ldo)     q8 · exactly 4 a16 rows
;;   q8_gemm(w, stride, zp, scale, v0, v1, x, sumx, xscale, t, out, ldo)  q8 · t a16 rows (prefill)
;;   q4_gemv(w, kb, v0, v1, x, n, out, ldo)    q4 · n a8 rows (decode)
;;   q4_gemm(w, kb, v0, v1, x, t, out, ldo)    q4 · t a8 rows (prefill)
;;   quant_b32(x, ldx, k, t, xa)   t f32 rows of k (row j at x + 4·j·ldx, k a multiple of 32)
;;                                 to a8-b32 at xa, kb = 4·ceil(k/128) blocks a row (padding 0)
;;   quant_a16(x, ldx, k, t, limit, xa, stride, sums, scales) → rows done
;;                                 t f32 rows of k to a16-row at xa (row j at xa + 2·j·stride)
;;   dots(q, g, k, n, dim, out, ldo)   softmax(p, n)   mix(p, ldp, g, v, n, dim, out)
;;     (attention: g query heads sharing one KV head at once)
;;   dots_q8(q16, qs, qx, nx, k, n, dim, out)   mix_q8(p, v, n, dim, w16, out)   (q8 KV)
;;   silu_mul(g, u, n, out)   (MLP)
;;   dot_probe() → i32   set_dot_add(on)   (which form of the 8-bit dot product the q4 tiles use)
;;
;; All weight rows [v0, v1) are computed. *_gemv read each weight row once for all n rows (it
;; stays in L1 while they are scored); *_gemm block the weight rows so that a block stays in
;; cache while every tile of 4 activation rows passes over it, each weight vector unpacked once
;; per tile. q4 results: per block (Σ q·x − zp · Σ x) exact in i32, then to f32, × s × xd, added
;; into lane (block mod 4) of an f32x4; the lanes summed (0+1)+(2+3) (kernel-ref.ts q4Dot). q8 results:
;; as the q8 rows kernels have always done (kernel-ref.ts q8RowDot).
(module
  (memory (export "memory") 1)

  ;; ---- the 8-bit dot product's two forms (relaxed build) ----

  ;; The q4 tiles sum their products with i16x8.relaxed_dot_i8x16_i7x16_s (and i16 adds) by
  ;; default, with i32x4.relaxed_dot_i8x16_i7x16_add_s when $dot_add is set (tiles of a weight row
  ;; pair and 1 to 4 activation rows, $q4_tile{4,3,2,1}x2_dot; a last odd row and 4, $q4_tile4_dot).
  ;; Both are exact here (the unsigned operand is a nibble) and give the same bits; which is
  ;; faster depends on the lowering: where the runtime has one AVX-VNNI vpdpbusd for the i32 form
  ;; it is about 1.2x, and where it has pmaddubsw + pmaddwd + paddd about 0.7x. kernel.ts sets it
  ;; from dot_probe, whose result tells the lowerings apart: lane 0 of the i32 form of 127s (the
  ;; signed operand) and bytes 0xff (the 7-bit one, out of its range on purpose): 129540
  ;; (4 · 255 · 127) from vpdpbusd (unsigned, summed in i32), 65534 (2 · 32767) from pmaddubsw
  ;; (unsigned, pairs saturated to i16), −508 from a signed dot product (arm64's sdot).
  (global $dot_add (mut i32) (i32.const 0))

  (func (export "set_dot_add") (param $on i32)
    (global.set $dot_add (local.get $on)))

  ;; 1: the 16-bit form's tiles of 1 to 4 activation rows take their looped copies
  ;; ($q4_tile1x4_loop, $q4_tile{4,3,2}x2_loop: a group's four 16-byte steps as a loop, the same
  ;; bits).
  ;; For V8 before 13 (Node 20-23), whose optimizing tier computes every load of a loop body
  ;; first and spills what does not fit in 16 registers: there the looped tiles are 1.2x, in
  ;; Node 24 0.92-0.96x, in Deno 0.85-0.88x. kernel.ts sets it from the V8 version (the relaxed
  ;; build only: the simd128 build has no such tiles and ignores it).
  (global $looped (mut i32) (i32.const 0))

  (func (export "set_looped") (param $on i32)
    (global.set $looped (local.get $on)))

  (func (export "dot_probe") (result i32)
;;#if relaxed
    (i32x4.extract_lane 0 (i32x4.relaxed_dot_i8x16_i7x16_add_s
      (i8x16.splat (i32.const 127)) (i8x16.splat (i32.const 255)) (v128.const i32x4 0 0 0 0)))
;;#else
    (i32.const 0)
;;#end
  )

;; ---- weights streamed from memory ----

  ;; Loads one word of each 64-byte line of [at, at + n) (bytes the caller reads next anyway).
  ;; WASM has no prefetch instruction. A decode kernel streams its weights from memory a row
  ;; or two at a time, and its arithmetic, stalled on one line's miss after another, overlapped
  ;; the memory poorly: a step's layers took about the time of reading them plus the time of
  ;; scoring them from cache. Touching the lines of the next 8 rows first ($touch_rows) sends
  ;; their misses out together, and the rows are then scored from cache: 1.3x on 64 decode
  ;; steps of the 0.5B q8 and q4 packages in Node 20, both builds (`npm run bench:ab`), about
  ;; 1.2x over touching a row pair at a time (scripts/bench/kernels.ts, "streamed"). The row
  ;; kernels take a $stream flag: $streams of the row width from the decode exports (rows,
  ;; rows4), 0 from the prefill one (q8_gemm; q4_gemm likewise), where touching rows before
  ;; every tile of 4 activation rows cost about 3%; those touch each block of weight rows once,
  ;; before its first tile (about 1.05x on a 26-token prompt, the size of a sentiment request;
  ;; nothing on 128 tokens). The words go into $touched so that no compiler drops the loads.
  ;; The q4 decode kernels no longer touch: their rows are placed in panels of 4 (q4_rows), which
  ;; a tile reads as one stream the prefetchers follow, and touching those measured slower.
  (global $touched (mut i32) (i32.const 0))

  (func $touch (param $at i32) (param $n i32)
    (local $end i32) (local $s i32)
    (local.set $end (i32.add (local.get $at) (local.get $n)))
    (block $done
      (loop $lines
        (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $s (i32.xor (local.get $s) (i32.load (local.get $at))))
        (local.set $at (i32.add (local.get $at) (i32.const 64)))
        (br $lines)))
    (global.set $touched (i32.xor (global.get $touched) (local.get $s))))

  ;; $touch of rows [v, v + 8) of a matrix of rows [v0, v1), `bytes` each, at row v (at `row`);
  ;; the last chunk ends at v1. Callers call it where v − v0 is a multiple of 8 (the test at the
  ;; call site: a call for every row pair made the tiny test model's decode step 1.1x slower).
  (func $touch_rows (param $row i32) (param $v i32) (param $v0 i32) (param $v1 i32)
    (param $bytes i32)
    (local $n i32)
    (local.set $n (i32.sub (local.get $v1) (local.get $v)))
    (if (i32.gt_u (local.get $n) (i32.const 8)) (then (local.set $n (i32.const 8))))
    (call $touch (local.get $row) (i32.mul (local.get $n) (local.get $bytes))))

  ;; Whether decode kernels touch rows of `bytes` first: rows of 4 cache lines or more (every
  ;; matrix of a 0.5B model). Touching narrower rows only added work: with these two checks the
  ;; tiny test model (64-byte rows) decodes at 0.97x its speed before any touching, where
  ;; touching every 8 rows of it gave 0.89x (`npm run bench:ab`, 2,000 steps).
  (func $streams (param $bytes i32) (result i32)
    (i32.ge_u (local.get $bytes) (i32.const 256)))

  ;; ---- q8 rows · int16 activations: copied from q8-head.wat (decode and the lm_head) ----

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

  ;; $store for row v and the n vectors j < n at once ($store4: j = 0..3; $store3, $store2 read
  ;; and write only their vectors' values): the n horizontal sums by shuffles (exact in i32),
  ;; then the same f32 operations in the same order, lane j for vector j, each result stored to
  ;; out[j * ldo + v].
  ;;#tile store4
  ;;#tile store3
  ;;#tile store2

  ;; Rows [v0, v1) against `n` vectors at x (each `stride` int16), one vector at a time per
  ;; row: the row stays in L1 while the vectors are scored. 32 weights per inner iteration,
  ;; two accumulators.
  (func $rows1
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32) (param $n i32)
    (param $out i32) (param $ldo i32) (param $stream i32)
    (local $v i32) (local $row i32) (local $j i32) (local $xj i32) (local $k i32) (local $xk i32)
    (local $a v128) (local $b v128) (local $w0 v128) (local $w1 v128)
    (local.set $v (local.get $v0))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $v) (local.get $v1)))
        (local.set $row (i32.add (local.get $w) (i32.mul (local.get $v) (local.get $stride))))
        (if (i32.and (local.get $stream)
              (i32.eqz (i32.and (i32.sub (local.get $v) (local.get $v0)) (i32.const 7))))
          (then (call $touch_rows (local.get $row) (local.get $v) (local.get $v0) (local.get $v1)
            (local.get $stride))))
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

  ;; Rows [v0, v1) (an even count) against one vector at x, two rows at a time: each
  ;; activation load serves both rows (half the loads of one row at a time; where the runtime
  ;; bounds-checks every load, as Deno does, half their checks). 32 weights per inner
  ;; iteration, two accumulators a row. Not for more vectors: there the row pair is read
  ;; from L1 once per vector, and it measured slower than $rows1 (2 vectors: 1.17x the time).
  (func $rows_pairs
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32)
    (param $out i32) (param $ldo i32) (param $stream i32)
    (local $v i32) (local $row i32) (local $ru i32) (local $k i32)
    (local $xk i32) (local $a v128) (local $b v128) (local $c v128) (local $d v128)
    (local $w0 v128) (local $u0 v128) (local $xa v128) (local $xb v128)
    (local.set $v (local.get $v0))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $v) (local.get $v1)))
        (local.set $row (i32.add (local.get $w) (i32.mul (local.get $v) (local.get $stride))))
        (local.set $ru (i32.add (local.get $row) (local.get $stride)))
        (if (i32.and (local.get $stream)
              (i32.eqz (i32.and (i32.sub (local.get $v) (local.get $v0)) (i32.const 7))))
          (then (call $touch_rows (local.get $row) (local.get $v) (local.get $v0) (local.get $v1)
            (local.get $stride))))
        (local.set $a (v128.const i32x4 0 0 0 0))
        (local.set $b (v128.const i32x4 0 0 0 0))
        (local.set $c (v128.const i32x4 0 0 0 0))
        (local.set $d (v128.const i32x4 0 0 0 0))
        (local.set $k (i32.const 0))
        (block $k_done
          (loop $k_loop
            (br_if $k_done (i32.ge_u (local.get $k) (local.get $stride)))
            (local.set $xk (i32.add (local.get $x) (i32.shl (local.get $k) (i32.const 1))))
            (local.set $w0 (v128.load (i32.add (local.get $row) (local.get $k))))
            (local.set $u0 (v128.load (i32.add (local.get $ru) (local.get $k))))
            (local.set $xa (v128.load (local.get $xk)))
            (local.set $xb (v128.load offset=16 (local.get $xk)))
            (local.set $a (i32x4.add (local.get $a)
              (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $w0)) (local.get $xa))))
            (local.set $c (i32x4.add (local.get $c)
              (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $u0)) (local.get $xa))))
            (local.set $b (i32x4.add (local.get $b)
              (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $w0)) (local.get $xb))))
            (local.set $d (i32x4.add (local.get $d)
              (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $u0)) (local.get $xb))))
            (local.set $w0 (v128.load offset=16 (i32.add (local.get $row) (local.get $k))))
            (local.set $u0 (v128.load offset=16 (i32.add (local.get $ru) (local.get $k))))
            (local.set $xa (v128.load offset=32 (local.get $xk)))
            (local.set $xb (v128.load offset=48 (local.get $xk)))
            (local.set $a (i32x4.add (local.get $a)
              (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $w0)) (local.get $xa))))
            (local.set $c (i32x4.add (local.get $c)
              (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $u0)) (local.get $xa))))
            (local.set $b (i32x4.add (local.get $b)
              (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $w0)) (local.get $xb))))
            (local.set $d (i32x4.add (local.get $d)
              (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $u0)) (local.get $xb))))
            (local.set $k (i32.add (local.get $k) (i32.const 32)))
            (br $k_loop)))
        (call $store
          (i32x4.add (local.get $a) (local.get $b)) (i32.const 0) (local.get $v)
          (local.get $zp) (local.get $scale) (local.get $sumx) (local.get $xscale)
          (local.get $out) (local.get $ldo))
        (call $store
          (i32x4.add (local.get $c) (local.get $d)) (i32.const 0)
          (i32.add (local.get $v) (i32.const 1))
          (local.get $zp) (local.get $scale) (local.get $sumx) (local.get $xscale)
          (local.get $out) (local.get $ldo))
        (local.set $v (i32.add (local.get $v) (i32.const 2)))
        (br $rows)))
  )

  ;; q8 rows · n int16 vectors (decode and the lm_head): one vector in row pairs
  ;; ($rows_pairs, a last odd row by $rows1), more by $rows_n.
  (func (export "rows")
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32) (param $n i32)
    (param $out i32) (param $ldo i32)
    (local $even i32)
    (if (i32.gt_u (local.get $n) (i32.const 1))
      (then
        (call $rows_n (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
          (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
          (local.get $n) (local.get $out) (local.get $ldo) (call $streams (local.get $stride)))
        (return)))
    (if (i32.eq (local.get $n) (i32.const 1))
      (then
        (local.set $even (i32.add (local.get $v0)
          (i32.and (i32.sub (local.get $v1) (local.get $v0)) (i32.const -2))))
        (call $rows_pairs (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
          (local.get $v0) (local.get $even) (local.get $x) (local.get $sumx) (local.get $xscale)
          (local.get $out) (local.get $ldo) (call $streams (local.get $stride)))
        (local.set $v0 (local.get $even))))
    (call $rows1 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
      (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
      (local.get $n) (local.get $out) (local.get $ldo) (call $streams (local.get $stride)))
  )

  ;; Rows [v0, v1) against exactly 4 vectors at x, two rows at a time (a last odd row alone as
  ;; before): per 8 weights of both rows, 2 widening loads (v128.load8x8_s), 4 activation loads
  ;; each used for both rows, 8 dots into 8 accumulators (row i, vector j). 8 weights a step, not
  ;; 16: TurboFan schedules row 0's dots before row 1's, so every activation vector of a step
  ;; stays live until row 1 uses it; 16 a step spills accumulators (8 + 8 + 2 > 15 registers).
  ;; About 1.15-1.2x the one-row loop below (scripts/bench/kernels.ts).
  (func (export "rows4")
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32)
    (param $out i32) (param $ldo i32)
    (call $rows4 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
      (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
      (local.get $out) (local.get $ldo) (call $streams (local.get $stride))))

  ;;#tile rows4

  ;; The same for exactly 3 and 2 vectors (decode batches of 3 and 2, the last rows of a prompt
  ;; chunk), where $rows1 read each row from L1 and widened it once per vector: 1.3-1.6x on a
  ;; decode step's matrices (scripts/bench/kernels.ts, q8 rows n=2 and n=3).
  ;;#tile rows3
  ;;#tile rows2

  ;; Rows [v0, v1) against n vectors: $rows2, $rows3 or $rows4 for 2 to 4, else $rows1.
  (func $rows_n
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32) (param $n i32)
    (param $out i32) (param $ldo i32) (param $stream i32)
    (block $other
      (block $four
        (block $three
          (block $two
            (br_table $other $other $two $three $four $other (local.get $n)))
          (call $rows2 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
            (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
            (local.get $out) (local.get $ldo) (local.get $stream))
          (return))
        (call $rows3 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
          (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
          (local.get $out) (local.get $ldo) (local.get $stream))
        (return))
      (call $rows4 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
        (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
        (local.get $out) (local.get $ldo) (local.get $stream))
      (return))
    (call $rows1 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
      (local.get $v0) (local.get $v1) (local.get $x) (local.get $sumx) (local.get $xscale)
      (local.get $n) (local.get $out) (local.get $ldo) (local.get $stream))
  )

  ;; Attention scores of g query heads that share one KV head (GQA):
  ;; out[h·ldo + t] = Σ_d q[h·dim + d] · k[t·dim + d], h < g, t < n; each sum in one f32x4
  ;; accumulator, 4 values at a time in d order, then its lanes added (0+1)+(2+3), so a score has
  ;; the same bits whichever tile computes it. Tiles of 2 heads × 4 positions (each q vector
  ;; and key vector loaded once for the tile, 8 sums in registers; 1.35x one sum at a time), the
  ;; last head of an odd g 1 × 4, the last n mod 4 positions one at a time. dim is a multiple of
  ;; 4; q, k and out are f32.
  (func (export "dots")
    (param $q i32) (param $g i32) (param $k i32) (param $n i32) (param $dim i32) (param $out i32)
    (param $ldo i32)
    (local $t i32) (local $h i32) (local $row i32) (local $qh i32) (local $qd i32) (local $qe i32)
    (local $kd i32) (local $bytes i32) (local $o i32) (local $k2 i32) (local $k3 i32)
    (local $q0 v128) (local $q1 v128) (local $x v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $bytes (i32.shl (local.get $dim) (i32.const 2)))
    (local.set $k2 (i32.shl (local.get $bytes) (i32.const 1)))
    (local.set $k3 (i32.add (local.get $k2) (local.get $bytes)))
    (local.set $ldo (i32.shl (local.get $ldo) (i32.const 2)))
    (local.set $row (local.get $k))
    (block $quads_done
      (loop $quads
        (br_if $quads_done (i32.gt_u (i32.add (local.get $t) (i32.const 4)) (local.get $n)))
        (local.set $h (i32.const 0))
        (local.set $qh (local.get $q))
        (local.set $o (i32.add (local.get $out) (i32.shl (local.get $t) (i32.const 2))))
        (block $pairs_done
          (loop $pairs
            (br_if $pairs_done (i32.ge_u (i32.add (local.get $h) (i32.const 1)) (local.get $g)))
            (local.set $a0 (v128.const i32x4 0 0 0 0))
            (local.set $a1 (v128.const i32x4 0 0 0 0))
            (local.set $a2 (v128.const i32x4 0 0 0 0))
            (local.set $a3 (v128.const i32x4 0 0 0 0))
            (local.set $b0 (v128.const i32x4 0 0 0 0))
            (local.set $b1 (v128.const i32x4 0 0 0 0))
            (local.set $b2 (v128.const i32x4 0 0 0 0))
            (local.set $b3 (v128.const i32x4 0 0 0 0))
            (local.set $qd (local.get $qh))
            (local.set $qe (i32.add (local.get $qh) (local.get $bytes)))
            (local.set $kd (local.get $row))
            (block $d_done
              (loop $d_loop
                (br_if $d_done (i32.ge_u (local.get $qd) (local.get $qe)))
                (local.set $q0 (v128.load (local.get $qd)))
                (local.set $q1 (v128.load (i32.add (local.get $qd) (local.get $bytes))))
                (local.set $x (v128.load (local.get $kd)))
                (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $q0) (local.get $x))))
                (local.set $b0 (f32x4.add (local.get $b0) (f32x4.mul (local.get $q1) (local.get $x))))
                (local.set $x (v128.load (i32.add (local.get $kd) (local.get $bytes))))
                (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $q0) (local.get $x))))
                (local.set $b1 (f32x4.add (local.get $b1) (f32x4.mul (local.get $q1) (local.get $x))))
                (local.set $x (v128.load (i32.add (local.get $kd) (local.get $k2))))
                (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $q0) (local.get $x))))
                (local.set $b2 (f32x4.add (local.get $b2) (f32x4.mul (local.get $q1) (local.get $x))))
                (local.set $x (v128.load (i32.add (local.get $kd) (local.get $k3))))
                (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $q0) (local.get $x))))
                (local.set $b3 (f32x4.add (local.get $b3) (f32x4.mul (local.get $q1) (local.get $x))))
                (local.set $qd (i32.add (local.get $qd) (i32.const 16)))
                (local.set $kd (i32.add (local.get $kd) (i32.const 16)))
                (br $d_loop)))
            (v128.store (local.get $o)
              (call $sums4 (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)))
            (v128.store (i32.add (local.get $o) (local.get $ldo))
              (call $sums4 (local.get $b0) (local.get $b1) (local.get $b2) (local.get $b3)))
            (local.set $o (i32.add (local.get $o) (i32.shl (local.get $ldo) (i32.const 1))))
            (local.set $qh (i32.add (local.get $qh) (i32.shl (local.get $bytes) (i32.const 1))))
            (local.set $h (i32.add (local.get $h) (i32.const 2)))
            (br $pairs)))
        ;; the last head of an odd g
        (if (i32.lt_u (local.get $h) (local.get $g))
          (then
            (local.set $a0 (v128.const i32x4 0 0 0 0))
            (local.set $a1 (v128.const i32x4 0 0 0 0))
            (local.set $a2 (v128.const i32x4 0 0 0 0))
            (local.set $a3 (v128.const i32x4 0 0 0 0))
            (local.set $qd (local.get $qh))
            (local.set $qe (i32.add (local.get $qh) (local.get $bytes)))
            (local.set $kd (local.get $row))
            (block $d1_done
              (loop $d1_loop
                (br_if $d1_done (i32.ge_u (local.get $qd) (local.get $qe)))
                (local.set $q0 (v128.load (local.get $qd)))
                (local.set $a0 (f32x4.add (local.get $a0)
                  (f32x4.mul (local.get $q0) (v128.load (local.get $kd)))))
                (local.set $a1 (f32x4.add (local.get $a1)
                  (f32x4.mul (local.get $q0) (v128.load (i32.add (local.get $kd) (local.get $bytes))))))
                (local.set $a2 (f32x4.add (local.get $a2)
                  (f32x4.mul (local.get $q0) (v128.load (i32.add (local.get $kd) (local.get $k2))))))
                (local.set $a3 (f32x4.add (local.get $a3)
                  (f32x4.mul (local.get $q0) (v128.load (i32.add (local.get $kd) (local.get $k3))))))
                (local.set $qd (i32.add (local.get $qd) (i32.const 16)))
                (local.set $kd (i32.add (local.get $kd) (i32.const 16)))
                (br $d1_loop)))
            (v128.store (local.get $o)
              (call $sums4 (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)))))
        (local.set $row (i32.add (local.get $row) (i32.shl (local.get $bytes) (i32.const 2))))
        (local.set $t (i32.add (local.get $t) (i32.const 4)))
        (br $quads)))
    ;; the last n mod 4 positions, one score at a time
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $t) (local.get $n)))
        (local.set $h (i32.const 0))
        (local.set $qh (local.get $q))
        (local.set $o (i32.add (local.get $out) (i32.shl (local.get $t) (i32.const 2))))
        (block $heads_done
          (loop $heads
            (br_if $heads_done (i32.ge_u (local.get $h) (local.get $g)))
            (local.set $a0 (v128.const i32x4 0 0 0 0))
            (local.set $qd (local.get $qh))
            (local.set $qe (i32.add (local.get $qh) (local.get $bytes)))
            (local.set $kd (local.get $row))
            (block $d2_done
              (loop $d2_loop
                (br_if $d2_done (i32.ge_u (local.get $qd) (local.get $qe)))
                (local.set $a0 (f32x4.add (local.get $a0)
                  (f32x4.mul (v128.load (local.get $qd)) (v128.load (local.get $kd)))))
                (local.set $qd (i32.add (local.get $qd) (i32.const 16)))
                (local.set $kd (i32.add (local.get $kd) (i32.const 16)))
                (br $d2_loop)))
            (f32.store (local.get $o) (call $hsum (local.get $a0)))
            (local.set $o (i32.add (local.get $o) (local.get $ldo)))
            (local.set $qh (local.get $qe))
            (local.set $h (i32.add (local.get $h) (i32.const 1)))
            (br $heads)))
        (local.set $row (i32.add (local.get $row) (local.get $bytes)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $rows)))
  )

  ;; Lane j: (xj[0] + xj[1]) + (xj[2] + xj[3]), $hsum of each of x0..x3 at once. $q4_tile4 and
  ;; $q4_tile4_dot end with the same shuffles written out: called there, once a weight row, it
  ;; made the q4 GEMM and a 4-row q4_gemv 3-7% slower in Node 20 (V8 does not inline calls).
  (func $sums4 (param $x0 v128) (param $x1 v128) (param $x2 v128) (param $x3 v128) (result v128)
    ;; [x0.0 + x0.1, x1.0 + x1.1, x0.2 + x0.3, x1.2 + x1.3], and the same of x2, x3
    (local.set $x0 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $x0) (local.get $x1))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $x0) (local.get $x1))))
    (local.set $x2 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $x2) (local.get $x3))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $x2) (local.get $x3))))
    (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $x0) (local.get $x2))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $x0) (local.get $x2)))
  )

  ;; The weighted sums of g heads over one KV head's values:
  ;; out[h·dim + d] = Σ_t p[h·ldp + t] · v[t·dim + d], h < g, t < n, each in t order. 16 values
  ;; (a cache line of every row) at a time, for heads in pairs (each value vector loaded once
  ;; for both: 1.33x a head at a time), then the last head of an odd g, before the next 16. dim is
  ;; a multiple of 16.
  (func (export "mix")
    (param $p i32) (param $ldp i32) (param $g i32) (param $v i32) (param $n i32) (param $dim i32)
    (param $out i32)
    (local $t i32) (local $h i32) (local $d i32) (local $at i32) (local $ph i32) (local $pe i32)
    (local $bytes i32)
    (local $w v128) (local $w1 v128) (local $x v128)
    (local $a v128) (local $b v128) (local $c v128) (local $e v128)
    (local $a1 v128) (local $b1 v128) (local $c1 v128) (local $e1 v128)
    (local.set $bytes (i32.shl (local.get $dim) (i32.const 2)))
    (local.set $ldp (i32.shl (local.get $ldp) (i32.const 2)))
    (block $done
      (loop $chunks
        (br_if $done (i32.ge_u (local.get $d) (local.get $bytes)))
        (local.set $h (i32.const 0))
        (local.set $ph (local.get $p))
        (block $pairs_done
          (loop $pairs
            (br_if $pairs_done (i32.ge_u (i32.add (local.get $h) (i32.const 1)) (local.get $g)))
            (local.set $a (v128.const i32x4 0 0 0 0))
            (local.set $b (v128.const i32x4 0 0 0 0))
            (local.set $c (v128.const i32x4 0 0 0 0))
            (local.set $e (v128.const i32x4 0 0 0 0))
            (local.set $a1 (v128.const i32x4 0 0 0 0))
            (local.set $b1 (v128.const i32x4 0 0 0 0))
            (local.set $c1 (v128.const i32x4 0 0 0 0))
            (local.set $e1 (v128.const i32x4 0 0 0 0))
            (local.set $at (i32.add (local.get $v) (local.get $d)))
            (local.set $t (local.get $ph))
            (local.set $pe (i32.add (local.get $ph) (i32.shl (local.get $n) (i32.const 2))))
            (block $t_done
              (loop $t_loop
                (br_if $t_done (i32.ge_u (local.get $t) (local.get $pe)))
                (local.set $w (v128.load32_splat (local.get $t)))
                (local.set $w1 (v128.load32_splat (i32.add (local.get $t) (local.get $ldp))))
                (local.set $x (v128.load (local.get $at)))
                (local.set $a (f32x4.add (local.get $a) (f32x4.mul (local.get $w) (local.get $x))))
                (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $w1) (local.get $x))))
                (local.set $x (v128.load offset=16 (local.get $at)))
                (local.set $b (f32x4.add (local.get $b) (f32x4.mul (local.get $w) (local.get $x))))
                (local.set $b1 (f32x4.add (local.get $b1) (f32x4.mul (local.get $w1) (local.get $x))))
                (local.set $x (v128.load offset=32 (local.get $at)))
                (local.set $c (f32x4.add (local.get $c) (f32x4.mul (local.get $w) (local.get $x))))
                (local.set $c1 (f32x4.add (local.get $c1) (f32x4.mul (local.get $w1) (local.get $x))))
                (local.set $x (v128.load offset=48 (local.get $at)))
                (local.set $e (f32x4.add (local.get $e) (f32x4.mul (local.get $w) (local.get $x))))
                (local.set $e1 (f32x4.add (local.get $e1) (f32x4.mul (local.get $w1) (local.get $x))))
                (local.set $at (i32.add (local.get $at) (local.get $bytes)))
                (local.set $t (i32.add (local.get $t) (i32.const 4)))
                (br $t_loop)))
            (local.set $at (i32.add (i32.add (local.get $out) (local.get $d))
              (i32.mul (local.get $h) (local.get $bytes))))
            (v128.store (local.get $at) (local.get $a))
            (v128.store offset=16 (local.get $at) (local.get $b))
            (v128.store offset=32 (local.get $at) (local.get $c))
            (v128.store offset=48 (local.get $at) (local.get $e))
            (local.set $at (i32.add (local.get $at) (local.get $bytes)))
            (v128.store (local.get $at) (local.get $a1))
            (v128.store offset=16 (local.get $at) (local.get $b1))
            (v128.store offset=32 (local.get $at) (local.get $c1))
            (v128.store offset=48 (local.get $at) (local.get $e1))
            (local.set $ph (i32.add (local.get $ph) (i32.shl (local.get $ldp) (i32.const 1))))
            (local.set $h (i32.add (local.get $h) (i32.const 2)))
            (br $pairs)))
        ;; the last head of an odd g
        (if (i32.lt_u (local.get $h) (local.get $g))
          (then
            (local.set $a (v128.const i32x4 0 0 0 0))
            (local.set $b (v128.const i32x4 0 0 0 0))
            (local.set $c (v128.const i32x4 0 0 0 0))
            (local.set $e (v128.const i32x4 0 0 0 0))
            (local.set $at (i32.add (local.get $v) (local.get $d)))
            (local.set $t (local.get $ph))
            (local.set $pe (i32.add (local.get $ph) (i32.shl (local.get $n) (i32.const 2))))
            (block $t1_done
              (loop $t1_loop
                (br_if $t1_done (i32.ge_u (local.get $t) (local.get $pe)))
                (local.set $w (v128.load32_splat (local.get $t)))
                (local.set $a (f32x4.add (local.get $a)
                  (f32x4.mul (local.get $w) (v128.load (local.get $at)))))
                (local.set $b (f32x4.add (local.get $b)
                  (f32x4.mul (local.get $w) (v128.load offset=16 (local.get $at)))))
                (local.set $c (f32x4.add (local.get $c)
                  (f32x4.mul (local.get $w) (v128.load offset=32 (local.get $at)))))
                (local.set $e (f32x4.add (local.get $e)
                  (f32x4.mul (local.get $w) (v128.load offset=48 (local.get $at)))))
                (local.set $at (i32.add (local.get $at) (local.get $bytes)))
                (local.set $t (i32.add (local.get $t) (i32.const 4)))
                (br $t1_loop)))
            (local.set $at (i32.add (i32.add (local.get $out) (local.get $d))
              (i32.mul (local.get $h) (local.get $bytes))))
            (v128.store (local.get $at) (local.get $a))
            (v128.store offset=16 (local.get $at) (local.get $b))
            (v128.store offset=32 (local.get $at) (local.get $c))
            (v128.store offset=48 (local.get $at) (local.get $e))))
        (local.set $d (i32.add (local.get $d) (i32.const 64)))
        (br $chunks)))
  )
  ;; ---- attention over a q8 KV cache ----

  ;; Records of a q8 KV run: per position dim int8 values, their f32 scale, then nx f32 values
  ;; (key channels kept apart, stored as 0 among the int8 ones; dim + 4 + 4·nx bytes;
  ;; kv-format.ts). Scores of one query head whose dim values are int16 at q16 with scale qs,
  ;; and whose values at the kept-apart channels are nx f32 at qx:
  ;; out[t] = f32(f32(f32(Σ_d q16[d] · k8[t][d]) · ks[t]) · qs) + qx[0] · kx[t][0] + … (f32,
  ;; in order), the sum exact in i32 (|Σ| ≤ dim · 32767 · 127 < 2^31 for dim ≤ 256). dim is a
  ;; multiple of 16.
  (func (export "dots_q8")
    (param $q16 i32) (param $qs f32) (param $qx i32) (param $nx i32) (param $k i32) (param $n i32)
    (param $dim i32) (param $out i32)
    (local $t i32) (local $d i32) (local $row i32) (local $rec i32) (local $v v128) (local $a v128)
    (local $i i32) (local $s f32)
    (local.set $rec (i32.add (local.get $dim) (i32.add (i32.const 4) (i32.shl (local.get $nx) (i32.const 2)))))
    (local.set $row (local.get $k))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $t) (local.get $n)))
        (local.set $a (v128.const i32x4 0 0 0 0))
        (local.set $d (i32.const 0))
        (block $d_done
          (loop $d_loop
            (br_if $d_done (i32.ge_u (local.get $d) (local.get $dim)))
            (local.set $v (v128.load (i32.add (local.get $row) (local.get $d))))
            (local.set $a (i32x4.add (local.get $a) (i32x4.dot_i16x8_s
              (i16x8.extend_low_i8x16_s (local.get $v))
              (v128.load (i32.add (local.get $q16) (i32.shl (local.get $d) (i32.const 1)))))))
            (local.set $a (i32x4.add (local.get $a) (i32x4.dot_i16x8_s
              (i16x8.extend_high_i8x16_s (local.get $v))
              (v128.load offset=16 (i32.add (local.get $q16) (i32.shl (local.get $d) (i32.const 1)))))))
            (local.set $d (i32.add (local.get $d) (i32.const 16)))
            (br $d_loop)))
        (local.set $s
          (f32.mul
            (f32.mul
              (f32.convert_i32_s
                (i32.add
                  (i32.add (i32x4.extract_lane 0 (local.get $a)) (i32x4.extract_lane 1 (local.get $a)))
                  (i32.add (i32x4.extract_lane 2 (local.get $a)) (i32x4.extract_lane 3 (local.get $a)))))
              (f32.load (i32.add (local.get $row) (local.get $dim))))
            (local.get $qs)))
        (local.set $i (i32.const 0))
        (block $x_done
          (loop $x_loop
            (br_if $x_done (i32.ge_u (local.get $i) (local.get $nx)))
            (local.set $s (f32.add (local.get $s)
              (f32.mul
                (f32.load (i32.add (local.get $qx) (i32.shl (local.get $i) (i32.const 2))))
                (f32.load offset=4 (i32.add (i32.add (local.get $row) (local.get $dim))
                  (i32.shl (local.get $i) (i32.const 2)))))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $x_loop)))
        (f32.store (i32.add (local.get $out) (i32.shl (local.get $t) (i32.const 2))) (local.get $s))
        (local.set $row (i32.add (local.get $row) (local.get $rec)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $rows)))
  )

  ;; The weighted sum of one head's q8 values (records as dots_q8's): with w[t] = f32(p[t] ·
  ;; vs[t]) (written over p) and ws = f32(max w / 32767), each w to int16 at w16 as
  ;; nearest(f32(w[t] · f32(32767 / max w))) (w16[n] = 0; all 0 when max w is 0), then per 16
  ;; values, positions in pairs (their bytes interleaved, one i32x4.dot_i16x8_s per 4 values):
  ;; out[d] = f32(acc[d] · ws), acc[d] the f32 sum, block after block of 256 positions, of each
  ;; block's exact i32 Σ w16[t] · v8[t][d] (|Σ| ≤ 256 · 32767 · 127 < 2^31). w16 has room for
  ;; n + 1 int16; dim is a multiple of 16.
  (func (export "mix_q8")
    (param $p i32) (param $v i32) (param $n i32) (param $dim i32) (param $w16 i32) (param $out i32)
    (local $t i32) (local $d i32) (local $rec i32) (local $row i32) (local $end i32)
    (local $w f32) (local $max f32) (local $inv f32) (local $ws f32)
    (local $x v128) (local $y v128) (local $lo v128) (local $hi v128) (local $pair v128)
    (local $i0 v128) (local $i1 v128) (local $i2 v128) (local $i3 v128)
    (local $f0 v128) (local $f1 v128) (local $f2 v128) (local $f3 v128)
    (local.set $rec (i32.add (local.get $dim) (i32.const 4)))
    ;; w = p · vs over p, and its max
    (local.set $row (i32.add (local.get $v) (local.get $dim)))
    (block $w_done
      (loop $w_loop
        (br_if $w_done (i32.ge_u (local.get $t) (local.get $n)))
        (local.set $w (f32.mul
          (f32.load (i32.add (local.get $p) (i32.shl (local.get $t) (i32.const 2))))
          (f32.load (local.get $row))))
        (f32.store (i32.add (local.get $p) (i32.shl (local.get $t) (i32.const 2))) (local.get $w))
        (local.set $max (f32.max (local.get $max) (f32.abs (local.get $w))))
        (local.set $row (i32.add (local.get $row) (local.get $rec)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $w_loop)))
    (if (f32.gt (local.get $max) (f32.const 0))
      (then
        (local.set $inv (f32.div (f32.const 32767) (local.get $max)))
        (local.set $ws (f32.div (local.get $max) (f32.const 32767)))))
    ;; 8 at a time, then one at a time (the same roundings)
    (local.set $x (f32x4.splat (local.get $inv)))
    (local.set $t (i32.const 0))
    (block $q8_done
      (loop $q8_loop
        (br_if $q8_done (i32.gt_u (i32.add (local.get $t) (i32.const 8)) (local.get $n)))
        (local.set $row (i32.add (local.get $p) (i32.shl (local.get $t) (i32.const 2))))
        (v128.store (i32.add (local.get $w16) (i32.shl (local.get $t) (i32.const 1)))
          (i16x8.narrow_i32x4_s
            (i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.mul (local.get $x) (v128.load (local.get $row)))))
            (i32x4.trunc_sat_f32x4_s
              (f32x4.nearest (f32x4.mul (local.get $x) (v128.load offset=16 (local.get $row)))))))
        (local.set $t (i32.add (local.get $t) (i32.const 8)))
        (br $q8_loop)))
    (block $q_done
      (loop $q_loop
        (br_if $q_done (i32.ge_u (local.get $t) (local.get $n)))
        (i32.store16 (i32.add (local.get $w16) (i32.shl (local.get $t) (i32.const 1)))
          (i32.trunc_sat_f32_s (f32.nearest (f32.mul (local.get $inv)
            (f32.load (i32.add (local.get $p) (i32.shl (local.get $t) (i32.const 2))))))))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $q_loop)))
    (i32.store16 (i32.add (local.get $w16) (i32.shl (local.get $n) (i32.const 1))) (i32.const 0))
    ;; 16 values a pass over the positions
    (block $chunks_done
      (loop $chunks
        (br_if $chunks_done (i32.ge_u (local.get $d) (local.get $dim)))
        (local.set $f0 (v128.const i32x4 0 0 0 0))
        (local.set $f1 (v128.const i32x4 0 0 0 0))
        (local.set $f2 (v128.const i32x4 0 0 0 0))
        (local.set $f3 (v128.const i32x4 0 0 0 0))
        (local.set $row (i32.add (local.get $v) (local.get $d)))
        (local.set $t (i32.const 0))
        (block $blocks_done
          (loop $blocks
            (br_if $blocks_done (i32.ge_u (local.get $t) (local.get $n)))
            (local.set $end (i32.add (local.get $t) (i32.const 256)))
            (if (i32.gt_u (local.get $end) (local.get $n)) (then (local.set $end (local.get $n))))
            (local.set $i0 (v128.const i32x4 0 0 0 0))
            (local.set $i1 (v128.const i32x4 0 0 0 0))
            (local.set $i2 (v128.const i32x4 0 0 0 0))
            (local.set $i3 (v128.const i32x4 0 0 0 0))
            (block $pairs_done
              (loop $pairs
                (br_if $pairs_done (i32.ge_u (local.get $t) (local.get $end)))
                (local.set $x (v128.load (local.get $row)))
                ;; the partner: position t + 1, or zeros past the last position
                (if (i32.lt_u (i32.add (local.get $t) (i32.const 1)) (local.get $end))
                  (then (local.set $y (v128.load (i32.add (local.get $row) (local.get $rec)))))
                  (else (local.set $y (v128.const i32x4 0 0 0 0))))
                (local.set $pair (i32x4.splat
                  (i32.load (i32.add (local.get $w16) (i32.shl (local.get $t) (i32.const 1))))))
                (local.set $lo (i8x16.shuffle 0 16 1 17 2 18 3 19 4 20 5 21 6 22 7 23
                  (local.get $x) (local.get $y)))
                (local.set $hi (i8x16.shuffle 8 24 9 25 10 26 11 27 12 28 13 29 14 30 15 31
                  (local.get $x) (local.get $y)))
                (local.set $i0 (i32x4.add (local.get $i0)
                  (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $lo)) (local.get $pair))))
                (local.set $i1 (i32x4.add (local.get $i1)
                  (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $lo)) (local.get $pair))))
                (local.set $i2 (i32x4.add (local.get $i2)
                  (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $hi)) (local.get $pair))))
                (local.set $i3 (i32x4.add (local.get $i3)
                  (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $hi)) (local.get $pair))))
                (local.set $row (i32.add (local.get $row) (i32.shl (local.get $rec) (i32.const 1))))
                (local.set $t (i32.add (local.get $t) (i32.const 2)))
                (br $pairs)))
            (local.set $f0 (f32x4.add (local.get $f0) (f32x4.convert_i32x4_s (local.get $i0))))
            (local.set $f1 (f32x4.add (local.get $f1) (f32x4.convert_i32x4_s (local.get $i1))))
            (local.set $f2 (f32x4.add (local.get $f2) (f32x4.convert_i32x4_s (local.get $i2))))
            (local.set $f3 (f32x4.add (local.get $f3) (f32x4.convert_i32x4_s (local.get $i3))))
            ;; an odd last block ended one position past n
            (local.set $t (local.get $end))
            (br $blocks)))
        (local.set $x (f32x4.splat (local.get $ws)))
        (local.set $row (i32.add (local.get $out) (i32.shl (local.get $d) (i32.const 2))))
        (v128.store (local.get $row) (f32x4.mul (local.get $f0) (local.get $x)))
        (v128.store offset=16 (local.get $row) (f32x4.mul (local.get $f1) (local.get $x)))
        (v128.store offset=32 (local.get $row) (f32x4.mul (local.get $f2) (local.get $x)))
        (v128.store offset=48 (local.get $row) (f32x4.mul (local.get $f3) (local.get $x)))
        (local.set $d (i32.add (local.get $d) (i32.const 16)))
        (br $chunks)))
  )

  ;; The gated MLP activation: out[i] = silu(g[i]) · u[i] = g / (1 + e^−g) · u, i < n (a multiple
  ;; of 4; out may be g or u). e^−g inline (;;#exp, scripts/lib/kernel-exp.ts), 8 vectors a step
  ;; and the last n mod 32 values one vector a step: the same bits for every value.
  (func (export "silu_mul")
    (param $g i32) (param $u i32) (param $n i32) (param $out i32)
    (local $i i32) (local $end i32)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local $x4 v128) (local $x5 v128) (local $x6 v128) (local $x7 v128)
    ;;#exp-locals 8
    ;;#exp-constants
    (local.set $n (i32.shl (local.get $n) (i32.const 2)))
    (local.set $end (i32.and (local.get $n) (i32.const -128)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $x0 (f32x4.neg (v128.load (i32.add (local.get $g) (local.get $i)))))
        (local.set $x1 (f32x4.neg (v128.load offset=16 (i32.add (local.get $g) (local.get $i)))))
        (local.set $x2 (f32x4.neg (v128.load offset=32 (i32.add (local.get $g) (local.get $i)))))
        (local.set $x3 (f32x4.neg (v128.load offset=48 (i32.add (local.get $g) (local.get $i)))))
        (local.set $x4 (f32x4.neg (v128.load offset=64 (i32.add (local.get $g) (local.get $i)))))
        (local.set $x5 (f32x4.neg (v128.load offset=80 (i32.add (local.get $g) (local.get $i)))))
        (local.set $x6 (f32x4.neg (v128.load offset=96 (i32.add (local.get $g) (local.get $i)))))
        (local.set $x7 (f32x4.neg (v128.load offset=112 (i32.add (local.get $g) (local.get $i)))))
        ;;#exp $x0 $x1 $x2 $x3 $x4 $x5 $x6 $x7
        (v128.store (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x0)))
            (v128.load (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=16 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=16 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x1)))
            (v128.load offset=16 (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=32 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=32 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x2)))
            (v128.load offset=32 (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=48 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=48 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x3)))
            (v128.load offset=48 (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=64 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=64 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x4)))
            (v128.load offset=64 (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=80 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=80 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x5)))
            (v128.load offset=80 (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=96 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=96 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x6)))
            (v128.load offset=96 (i32.add (local.get $u) (local.get $i)))))
        (v128.store offset=112 (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load offset=112 (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x7)))
            (v128.load offset=112 (i32.add (local.get $u) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 128)))
        (br $each)))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $x0 (f32x4.neg (v128.load (i32.add (local.get $g) (local.get $i)))))
        ;;#exp $x0
        (v128.store (i32.add (local.get $out) (local.get $i))
          (f32x4.mul
            (f32x4.div (v128.load (i32.add (local.get $g) (local.get $i)))
              (f32x4.add (local.get $e_one) (local.get $x0)))
            (v128.load (i32.add (local.get $u) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $tail)))
  )

  ;; Attention weights of one query head, in place: p[t] = e^(p[t] − max) / Σ, t < n, all f32; e^x
  ;; inline (;;#exp), 8 vectors a step, then one; the sum is of 4 lanes, vector after vector in
  ;; t order, its lanes added (0+1)+(2+3). p[n … n rounded up to 4) are overwritten (−∞ in, about
  ;; 1e-38 out: they add nothing to a sum of at least 1).
  (func $softmax (export "softmax")
    (param $p i32) (param $n i32)
    (local $i i32) (local $end i32) (local $end8 i32) (local $m v128) (local $m2 v128) (local $s v128)
    (local $max f32)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local $x4 v128) (local $x5 v128) (local $x6 v128) (local $x7 v128)
    ;;#exp-locals 8
    (local.set $end (i32.shl (i32.and (i32.add (local.get $n) (i32.const 3)) (i32.const -4)) (i32.const 2)))
    (local.set $i (i32.shl (local.get $n) (i32.const 2)))
    (block $pad_done
      (loop $pad
        (br_if $pad_done (i32.ge_u (local.get $i) (local.get $end)))
        (f32.store (i32.add (local.get $p) (local.get $i)) (f32.const -inf))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $pad)))
    ;; the maximum in two accumulators (even and odd vectors: the same maximum in any order)
    (local.set $m (f32x4.splat (f32.const -inf)))
    (local.set $m2 (local.get $m))
    (local.set $i (i32.const 0))
    (block $max_done
      (loop $max_loop
        (br_if $max_done (i32.ge_u (i32.add (local.get $i) (i32.const 16)) (local.get $end)))
        (local.set $m (f32x4.max (local.get $m) (v128.load (i32.add (local.get $p) (local.get $i)))))
        (local.set $m2 (f32x4.max (local.get $m2) (v128.load offset=16 (i32.add (local.get $p) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 32)))
        (br $max_loop)))
    (if (i32.lt_u (local.get $i) (local.get $end))
      (then (local.set $m (f32x4.max (local.get $m) (v128.load (i32.add (local.get $p) (local.get $i)))))))
    (local.set $m (f32x4.max (local.get $m) (local.get $m2)))
    (local.set $max
      (f32.max
        (f32.max (f32x4.extract_lane 0 (local.get $m)) (f32x4.extract_lane 1 (local.get $m)))
        (f32.max (f32x4.extract_lane 2 (local.get $m)) (f32x4.extract_lane 3 (local.get $m)))))
    (local.set $m (f32x4.splat (local.get $max)))
    ;;#exp-constants
    (local.set $s (v128.const f32x4 0 0 0 0))
    (local.set $end8 (i32.and (local.get $end) (i32.const -128)))
    (local.set $i (i32.const 0))
    (block $exp_done
      (loop $exp_loop
        (br_if $exp_done (i32.ge_u (local.get $i) (local.get $end8)))
        (local.set $x0 (f32x4.sub (v128.load (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x1 (f32x4.sub (v128.load offset=16 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x2 (f32x4.sub (v128.load offset=32 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x3 (f32x4.sub (v128.load offset=48 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x4 (f32x4.sub (v128.load offset=64 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x5 (f32x4.sub (v128.load offset=80 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x6 (f32x4.sub (v128.load offset=96 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        (local.set $x7 (f32x4.sub (v128.load offset=112 (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        ;;#exp $x0 $x1 $x2 $x3 $x4 $x5 $x6 $x7
        (v128.store (i32.add (local.get $p) (local.get $i)) (local.get $x0))
        (v128.store offset=16 (i32.add (local.get $p) (local.get $i)) (local.get $x1))
        (v128.store offset=32 (i32.add (local.get $p) (local.get $i)) (local.get $x2))
        (v128.store offset=48 (i32.add (local.get $p) (local.get $i)) (local.get $x3))
        (v128.store offset=64 (i32.add (local.get $p) (local.get $i)) (local.get $x4))
        (v128.store offset=80 (i32.add (local.get $p) (local.get $i)) (local.get $x5))
        (v128.store offset=96 (i32.add (local.get $p) (local.get $i)) (local.get $x6))
        (v128.store offset=112 (i32.add (local.get $p) (local.get $i)) (local.get $x7))
        (local.set $s (f32x4.add (f32x4.add (f32x4.add (f32x4.add (local.get $s)
          (local.get $x0)) (local.get $x1)) (local.get $x2)) (local.get $x3)))
        (local.set $s (f32x4.add (f32x4.add (f32x4.add (f32x4.add (local.get $s)
          (local.get $x4)) (local.get $x5)) (local.get $x6)) (local.get $x7)))
        (local.set $i (i32.add (local.get $i) (i32.const 128)))
        (br $exp_loop)))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $x0 (f32x4.sub (v128.load (i32.add (local.get $p) (local.get $i))) (local.get $m)))
        ;;#exp $x0
        (v128.store (i32.add (local.get $p) (local.get $i)) (local.get $x0))
        (local.set $s (f32x4.add (local.get $s) (local.get $x0)))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $tail)))
    (local.set $s
      (f32x4.splat
        (f32.div (f32.const 1)
          (f32.add
            (f32.add (f32x4.extract_lane 0 (local.get $s)) (f32x4.extract_lane 1 (local.get $s)))
            (f32.add (f32x4.extract_lane 2 (local.get $s)) (f32x4.extract_lane 3 (local.get $s)))))))
    (local.set $i (i32.const 0))
    (block $scale_done
      (loop $scale
        (br_if $scale_done (i32.ge_u (local.get $i) (local.get $end)))
        (v128.store (i32.add (local.get $p) (local.get $i))
          (f32x4.mul (local.get $s) (v128.load (i32.add (local.get $p) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $scale)))
  )
  ;; `softmax` of g rows of n scores, row h at p + 4 · h · ld (ld ≥ n rounded up to 4): one call
  ;; for a KV head's query heads.
  (func (export "softmax_rows")
    (param $p i32) (param $ld i32) (param $g i32) (param $n i32)
    (local $h i32)
    (local.set $ld (i32.shl (local.get $ld) (i32.const 2)))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $h) (local.get $g)))
        (call $softmax (local.get $p) (local.get $n))
        (local.set $p (i32.add (local.get $p) (local.get $ld)))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $rows)))
  )

  ;; RMS norm of b rows of n floats (n a multiple of 4; rows back to back at x and at out, which
  ;; may be x): out[i] = f32(f32(x[i] · inv) · w[i]) with inv = f32(1 / sqrt(f32(ss / n) + eps))
  ;; (f32 arithmetic), ss the sum of the row's squares in 4 f32 lanes (lane c: i ≡ c mod 4, in i
  ;; order), the lanes added (0+1)+(2+3) (kernel-ref.ts rmsNormRef).
  (func (export "rms_norm")
    (param $x i32) (param $out i32) (param $b i32) (param $n i32) (param $w i32) (param $eps f32)
    (local $r i32) (local $i i32) (local $bytes i32) (local $s v128) (local $v v128)
    (local $inv v128)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $r) (local.get $b)))
        (local.set $s (v128.const f32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $squares_done
          (loop $squares
            (br_if $squares_done (i32.ge_u (local.get $i) (local.get $bytes)))
            (local.set $v (v128.load (i32.add (local.get $x) (local.get $i))))
            (local.set $s (f32x4.add (local.get $s) (f32x4.mul (local.get $v) (local.get $v))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $squares)))
        (local.set $inv
          (f32x4.splat
            (f32.div (f32.const 1)
              (f32.sqrt
                (f32.add
                  (f32.div (call $hsum (local.get $s)) (f32.convert_i32_u (local.get $n)))
                  (local.get $eps))))))
        (local.set $i (i32.const 0))
        (block $scale_done
          (loop $scale
            (br_if $scale_done (i32.ge_u (local.get $i) (local.get $bytes)))
            (v128.store (i32.add (local.get $out) (local.get $i))
              (f32x4.mul
                (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $i))) (local.get $inv))
                (v128.load (i32.add (local.get $w) (local.get $i)))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $scale)))
        (local.set $x (i32.add (local.get $x) (local.get $bytes)))
        (local.set $out (i32.add (local.get $out) (local.get $bytes)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rows)))
  )

  ;; x[r · n + i] += y[i] for b rows of n floats (row r at x + 4 · r · n; n a multiple of 4): y
  ;; added to every row (the q, k, v biases), or with b = 1 and n the whole block, element by
  ;; element (the residual stream).
  (func (export "add_rows")
    (param $x i32) (param $b i32) (param $n i32) (param $y i32)
    (local $r i32) (local $i i32)
    (local.set $n (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $r) (local.get $b)))
        (local.set $i (i32.const 0))
        (block $row_done
          (loop $row
            (br_if $row_done (i32.ge_u (local.get $i) (local.get $n)))
            (v128.store (i32.add (local.get $x) (local.get $i))
              (f32x4.add (v128.load (i32.add (local.get $x) (local.get $i)))
                (v128.load (i32.add (local.get $y) (local.get $i)))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $row)))
        (local.set $x (i32.add (local.get $x) (local.get $n)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rows)))
  )

  ;; ---- q8 prefill ----

  ;; q8 rows · t int16 rows: weight rows in blocks of about 64 KiB (an even number of rows, at
  ;; least 4, so that rows4 scores them in pairs), each block scored by every tile of 4
  ;; activation rows (rows4) while it is in cache, then by the last t mod 4 ($rows_n).
  (func (export "q8_gemm")
    (param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)
    (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $sumx i32) (param $xscale i32) (param $t i32)
    (param $out i32) (param $ldo i32)
    (local $rb i32) (local $vb i32) (local $ve i32) (local $j i32)
    (local.set $rb (i32.and (i32.div_u (i32.const 65536) (local.get $stride)) (i32.const -2)))
    (if (i32.lt_u (local.get $rb) (i32.const 4)) (then (local.set $rb (i32.const 4))))
    (local.set $vb (local.get $v0))
    (block $done
      (loop $blocks
        (br_if $done (i32.ge_u (local.get $vb) (local.get $v1)))
        (local.set $ve (i32.add (local.get $vb) (local.get $rb)))
        (if (i32.gt_u (local.get $ve) (local.get $v1)) (then (local.set $ve (local.get $v1))))
        (call $touch (i32.add (local.get $w) (i32.mul (local.get $vb) (local.get $stride)))
          (i32.mul (i32.sub (local.get $ve) (local.get $vb)) (local.get $stride)))
        (local.set $j (i32.const 0))
        (block $tiles_done
          (loop $tiles
            (br_if $tiles_done (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $t)))
            (call $rows4 (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
              (local.get $vb) (local.get $ve)
              (i32.add (local.get $x)
                (i32.shl (i32.mul (local.get $j) (local.get $stride)) (i32.const 1)))
              (i32.add (local.get $sumx) (i32.shl (local.get $j) (i32.const 2)))
              (i32.add (local.get $xscale) (i32.shl (local.get $j) (i32.const 2)))
              (i32.add (local.get $out)
                (i32.shl (i32.mul (local.get $j) (local.get $ldo)) (i32.const 2)))
              (local.get $ldo) (i32.const 0))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $tiles)))
        (if (i32.lt_u (local.get $j) (local.get $t))
          (then
            (call $rows_n (local.get $w) (local.get $stride) (local.get $zp) (local.get $scale)
              (local.get $vb) (local.get $ve)
              (i32.add (local.get $x)
                (i32.shl (i32.mul (local.get $j) (local.get $stride)) (i32.const 1)))
              (i32.add (local.get $sumx) (i32.shl (local.get $j) (i32.const 2)))
              (i32.add (local.get $xscale) (i32.shl (local.get $j) (i32.const 2)))
              (i32.sub (local.get $t) (local.get $j))
              (i32.add (local.get $out)
                (i32.shl (i32.mul (local.get $j) (local.get $ldo)) (i32.const 2)))
              (local.get $ldo) (i32.const 0))))
        (local.set $vb (local.get $ve))
        (br $blocks)))
  )

  ;; ---- activations: f32 rows to a8-b32 ----

  ;; Per block of 32: d = max|x| / 127, q = nearest(x · (127 / max|x|)) (ties to even, in
  ;; [−127, 127]), Σ q; stored in the weights' block order (activations.ts).
  (func (export "quant_b32")
    (param $x i32) (param $ldx i32) (param $k i32) (param $t i32) (param $xa i32)
    (local $kb i32) (local $j i32) (local $c i32) (local $src i32) (local $dst i32)
    (local $max f32) (local $inv v128) (local $sum v128)
    (local $v0 v128) (local $v1 v128) (local $v2 v128) (local $v3 v128)
    (local $v4 v128) (local $v5 v128) (local $v6 v128) (local $v7 v128)
    (local $m v128) (local $n0 v128) (local $n1 v128) (local $absmask v128) (local $magic v128)
    (local.set $absmask (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff))
    (local.set $magic (v128.const f32x4 12582912 12582912 12582912 12582912))
    (local.set $kb (i32.shl (i32.shr_u (i32.add (local.get $k) (i32.const 127)) (i32.const 7))
      (i32.const 2)))
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $j) (local.get $t)))
        (local.set $src
          (i32.add (local.get $x) (i32.shl (i32.mul (local.get $j) (local.get $ldx)) (i32.const 2))))
        (local.set $c (i32.const 0))
        (block $blocks_done
          (loop $blocks
            (br_if $blocks_done (i32.ge_u (local.get $c) (local.get $kb)))
            ;; the block's lane of its group: bytes at + 16m, scale at + 128, sum at + 144
            (local.set $dst
              (i32.add
                (i32.add (local.get $xa) (i32.mul (local.get $j) (i32.mul (local.get $kb) (i32.const 40))))
                (i32.add (i32.mul (i32.shr_u (local.get $c) (i32.const 2)) (i32.const 160))
                  (i32.shl (i32.and (local.get $c) (i32.const 3)) (i32.const 2)))))
            (if (i32.lt_u (i32.shl (local.get $c) (i32.const 5)) (local.get $k))
              (then
                (local.set $v0 (v128.load (local.get $src)))
                (local.set $v1 (v128.load offset=16 (local.get $src)))
                (local.set $v2 (v128.load offset=32 (local.get $src)))
                (local.set $v3 (v128.load offset=48 (local.get $src)))
                (local.set $v4 (v128.load offset=64 (local.get $src)))
                (local.set $v5 (v128.load offset=80 (local.get $src)))
                (local.set $v6 (v128.load offset=96 (local.get $src)))
                (local.set $v7 (v128.load offset=112 (local.get $src)))
                ;; max |x| as the integer maximum of the bit patterns without their signs (the
                ;; same order as the floats', one pmaxsd on x64 where f32x4.max takes several
                ;; instructions; a NaN is above every number, so it still makes the scale NaN)
                (local.set $m
                  (i32x4.max_s
                    (i32x4.max_s (i32x4.max_s (v128.and (local.get $v0) (local.get $absmask)) (v128.and (local.get $v1) (local.get $absmask)))
                      (i32x4.max_s (v128.and (local.get $v2) (local.get $absmask)) (v128.and (local.get $v3) (local.get $absmask))))
                    (i32x4.max_s (i32x4.max_s (v128.and (local.get $v4) (local.get $absmask)) (v128.and (local.get $v5) (local.get $absmask)))
                      (i32x4.max_s (v128.and (local.get $v6) (local.get $absmask)) (v128.and (local.get $v7) (local.get $absmask))))))
                (local.set $m
                  (i32x4.max_s (local.get $m) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $m) (local.get $m))))
                (local.set $max
                  (f32.reinterpret_i32
                    (select (i32x4.extract_lane 0 (local.get $m)) (i32x4.extract_lane 1 (local.get $m))
                      (i32.gt_s (i32x4.extract_lane 0 (local.get $m)) (i32x4.extract_lane 1 (local.get $m))))))
                (local.set $inv
                  (f32x4.splat
                    (select (f32.div (f32.const 127) (local.get $max)) (f32.const 0)
                      (f32.gt (local.get $max) (f32.const 0)))))
                ;; x · inv rounded to the nearest integer, ties to even, as f32x4.nearest then
                ;; i32x4.trunc_sat_f32x4_s (|x · inv| ≤ 127): + 1.5 · 2^23 rounds it into the
                ;; low mantissa bits, and − the bits of 1.5 · 2^23 leaves the integer
                (local.set $v0 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v0) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v1 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v1) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v2 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v2) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v3 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v3) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v4 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v4) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v5 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v5) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v6 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v6) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $v7 (i32x4.sub (f32x4.add (f32x4.mul (local.get $v7) (local.get $inv)) (local.get $magic)) (local.get $magic)))
                (local.set $sum
                  (i32x4.add
                    (i32x4.add (i32x4.add (local.get $v0) (local.get $v1))
                      (i32x4.add (local.get $v2) (local.get $v3)))
                    (i32x4.add (i32x4.add (local.get $v4) (local.get $v5))
                      (i32x4.add (local.get $v6) (local.get $v7)))))
                ;; inputs 0..15 and 16..31 of the block, in order
                (local.set $n0
                  (i8x16.narrow_i16x8_s
                    (i16x8.narrow_i32x4_s (local.get $v0) (local.get $v1))
                    (i16x8.narrow_i32x4_s (local.get $v2) (local.get $v3))))
                (local.set $n1
                  (i8x16.narrow_i16x8_s
                    (i16x8.narrow_i32x4_s (local.get $v4) (local.get $v5))
                    (i16x8.narrow_i32x4_s (local.get $v6) (local.get $v7))))
                ;; 4 inputs at a time to their lane of the group's 16-byte rows
                (v128.store32_lane 0 (local.get $dst) (local.get $n0))
                (v128.store32_lane offset=16 1 (local.get $dst) (local.get $n0))
                (v128.store32_lane offset=32 2 (local.get $dst) (local.get $n0))
                (v128.store32_lane offset=48 3 (local.get $dst) (local.get $n0))
                (v128.store32_lane offset=64 0 (local.get $dst) (local.get $n1))
                (v128.store32_lane offset=80 1 (local.get $dst) (local.get $n1))
                (v128.store32_lane offset=96 2 (local.get $dst) (local.get $n1))
                (v128.store32_lane offset=112 3 (local.get $dst) (local.get $n1))
                (f32.store offset=128 (local.get $dst) (f32.div (local.get $max) (f32.const 127)))
                (i32.store offset=144 (local.get $dst)
                  (i32.add
                    (i32.add (i32x4.extract_lane 0 (local.get $sum)) (i32x4.extract_lane 1 (local.get $sum)))
                    (i32.add (i32x4.extract_lane 2 (local.get $sum)) (i32x4.extract_lane 3 (local.get $sum))))))
              (else
                (i32.store (local.get $dst) (i32.const 0))
                (i32.store offset=16 (local.get $dst) (i32.const 0))
                (i32.store offset=32 (local.get $dst) (i32.const 0))
                (i32.store offset=48 (local.get $dst) (i32.const 0))
                (i32.store offset=64 (local.get $dst) (i32.const 0))
                (i32.store offset=80 (local.get $dst) (i32.const 0))
                (i32.store offset=96 (local.get $dst) (i32.const 0))
                (i32.store offset=112 (local.get $dst) (i32.const 0))
                (f32.store offset=128 (local.get $dst) (f32.const 0))
                (i32.store offset=144 (local.get $dst) (i32.const 0))))
            (local.set $src (i32.add (local.get $src) (i32.const 128)))
            (local.set $c (i32.add (local.get $c) (i32.const 1)))
            (br $blocks)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $rows)))
  )

  ;; ---- activations: f32 rows to a16-row ----

  ;; Per row j (f32 at x + 4·j·ldx, k values): max = max|x|, scale = max / limit,
  ;; q = nearest(x · (1 / scale)) (ties to even; 0 when max is 0) as int16 at xa + 2·j·stride,
  ;; zero padded to stride; Σ q as f32 at sums + 4j and the scale at scales + 4j. All f32
  ;; arithmetic (activations.ts quantizeRows). Returns the first row with a value that is not
  ;; finite (it and the rows after it are not written), or t.
  (func (export "quant_a16")
    (param $x i32) (param $ldx i32) (param $k i32) (param $t i32) (param $limit f32)
    (param $xa i32) (param $stride i32) (param $sums i32) (param $scales i32)
    (result i32)
    (local $j i32) (local $i i32) (local $k8 i32) (local $src i32) (local $dst i32) (local $q i32)
    (local $max f32) (local $scale f32) (local $inv f32) (local $total i32)
    (local $m v128) (local $vinv v128) (local $sum v128) (local $a v128) (local $b v128)
    (local.set $k8 (i32.and (local.get $k) (i32.const -8)))
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $j) (local.get $t)))
        (local.set $src
          (i32.add (local.get $x) (i32.shl (i32.mul (local.get $j) (local.get $ldx)) (i32.const 2))))
        (local.set $dst
          (i32.add (local.get $xa) (i32.shl (i32.mul (local.get $j) (local.get $stride)) (i32.const 1))))
        ;; max |x| (a NaN makes it NaN)
        (local.set $m (v128.const f32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $max_done
          (loop $max_loop
            (br_if $max_done (i32.ge_u (local.get $i) (local.get $k8)))
            (local.set $a (v128.load (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 2)))))
            (local.set $b (v128.load offset=16 (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 2)))))
            (local.set $m (f32x4.max (local.get $m) (f32x4.max (f32x4.abs (local.get $a)) (f32x4.abs (local.get $b)))))
            (local.set $i (i32.add (local.get $i) (i32.const 8)))
            (br $max_loop)))
        (local.set $max
          (f32.max
            (f32.max (f32x4.extract_lane 0 (local.get $m)) (f32x4.extract_lane 1 (local.get $m)))
            (f32.max (f32x4.extract_lane 2 (local.get $m)) (f32x4.extract_lane 3 (local.get $m)))))
        (block $tail_done
          (loop $tail
            (br_if $tail_done (i32.ge_u (local.get $i) (local.get $k)))
            (local.set $max
              (f32.max (local.get $max)
                (f32.abs (f32.load (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 2)))))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $tail)))
        ;; NaN or infinity
        (if (i32.eqz (f32.lt (local.get $max) (f32.const inf))) (then (return (local.get $j))))
        (local.set $scale (f32.div (local.get $max) (local.get $limit)))
        (local.set $inv
          (select (f32.div (f32.const 1) (local.get $scale)) (f32.const 0)
            (f32.gt (local.get $scale) (f32.const 0))))
        (local.set $vinv (f32x4.splat (local.get $inv)))
        (local.set $sum (v128.const i32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $q_done
          (loop $q_loop
            (br_if $q_done (i32.ge_u (local.get $i) (local.get $k8)))
            (local.set $a
              (i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.mul (local.get $vinv)
                (v128.load (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 2))))))))
            (local.set $b
              (i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.mul (local.get $vinv)
                (v128.load offset=16 (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 2))))))))
            (v128.store (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 1)))
              (i16x8.narrow_i32x4_s (local.get $a) (local.get $b)))
            (local.set $sum (i32x4.add (local.get $sum) (i32x4.add (local.get $a) (local.get $b))))
            (local.set $i (i32.add (local.get $i) (i32.const 8)))
            (br $q_loop)))
        (local.set $total
          (i32.add
            (i32.add (i32x4.extract_lane 0 (local.get $sum)) (i32x4.extract_lane 1 (local.get $sum)))
            (i32.add (i32x4.extract_lane 2 (local.get $sum)) (i32x4.extract_lane 3 (local.get $sum)))))
        (block $qt_done
          (loop $qt
            (br_if $qt_done (i32.ge_u (local.get $i) (local.get $k)))
            (local.set $q
              (i32.trunc_sat_f32_s (f32.nearest (f32.mul (local.get $inv)
                (f32.load (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 2))))))))
            (i32.store16 (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 1))) (local.get $q))
            (local.set $total (i32.add (local.get $total) (local.get $q)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $qt)))
        (block $pad_done
          (loop $pad
            (br_if $pad_done (i32.ge_u (local.get $i) (local.get $stride)))
            (i32.store16 (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 1))) (i32.const 0))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $pad)))
        (f32.store (i32.add (local.get $sums) (i32.shl (local.get $j) (i32.const 2)))
          (f32.convert_i32_s (local.get $total)))
        (f32.store (i32.add (local.get $scales) (i32.shl (local.get $j) (i32.const 2)))
          (local.get $scale))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $rows)))
    (local.get $t))

    ;; ---- q4 weights · a8-b32 activations ----

  ;; One weight row (at wq) · one activation row (at x), stored at out. Per group of 4 blocks: 4 loads of 32 nibbles, their low and high halves against
  ;; bytes 0..63 and 64..127 of the group's activations; the integer sums of the 4 blocks end
  ;; in the 4 lanes of one i32x4.
  (func $q4_tile1
    (param $wq i32) (param $kb i32) (param $x i32) (param $out i32)
    (local $end i32) (local $p v128) (local $lo v128) (local $hi v128) (local $m v128)
    (local $a0 v128) (local $a1 v128) (local $h0 v128) (local $h1 v128) (local $f v128)
    (local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))
    (local.set $m (i8x16.splat (i32.const 15)))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $wq) (local.get $end)))
;;#if relaxed
        ;; nibbles 0..15 are the unsigned 7-bit operand, so each i16 lane (2 products) is exact
        ;; and deterministic; 8 of them, |Σ| ≤ 8 · 2 · 128 · 15 < 2^15, sum exactly in i16 (on x64
        ;; without AVX-VNNI one pmaddubsw each; the i32 form adds a pmaddwd and a paddd to each)
        (local.set $p (v128.load (local.get $wq)))
        (local.set $a0 (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load (local.get $x))
          (v128.and (local.get $p) (local.get $m))))
        (local.set $a1 (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=64 (local.get $x))
          (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m))))
        (local.set $p (v128.load offset=16 (local.get $wq)))
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (v128.load offset=16 (local.get $x)) (v128.and (local.get $p) (local.get $m)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (v128.load offset=80 (local.get $x))
          (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))))
        (local.set $p (v128.load offset=32 (local.get $wq)))
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (v128.load offset=32 (local.get $x)) (v128.and (local.get $p) (local.get $m)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (v128.load offset=96 (local.get $x))
          (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))))
        (local.set $p (v128.load offset=48 (local.get $wq)))
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (v128.load offset=48 (local.get $x)) (v128.and (local.get $p) (local.get $m)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (v128.load offset=112 (local.get $x))
          (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))))
        ;; i32 lane b: the 4 bytes of block b
        (local.set $a0 (i32x4.extadd_pairwise_i16x8_s (i16x8.add (local.get $a0) (local.get $a1))))
;;#else
        ;; widened to i16: the dot of the low 8 bytes gives lanes of blocks 0, 0, 1, 1, of the
        ;; high 8 bytes blocks 2, 2, 3, 3
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $h0 (v128.const i32x4 0 0 0 0))
        (local.set $h1 (v128.const i32x4 0 0 0 0))
        (local.set $p (v128.load (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $lo)) (v128.load8x8_s (local.get $x)))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $lo)) (v128.load8x8_s offset=8 (local.get $x)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $hi)) (v128.load8x8_s offset=64 (local.get $x)))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $hi)) (v128.load8x8_s offset=72 (local.get $x)))))
        (local.set $p (v128.load offset=16 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $lo)) (v128.load8x8_s offset=16 (local.get $x)))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $lo)) (v128.load8x8_s offset=24 (local.get $x)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $hi)) (v128.load8x8_s offset=80 (local.get $x)))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $hi)) (v128.load8x8_s offset=88 (local.get $x)))))
        (local.set $p (v128.load offset=32 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $lo)) (v128.load8x8_s offset=32 (local.get $x)))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $lo)) (v128.load8x8_s offset=40 (local.get $x)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $hi)) (v128.load8x8_s offset=96 (local.get $x)))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $hi)) (v128.load8x8_s offset=104 (local.get $x)))))
        (local.set $p (v128.load offset=48 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $lo)) (v128.load8x8_s offset=48 (local.get $x)))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $lo)) (v128.load8x8_s offset=56 (local.get $x)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.dot_i16x8_s
          (i16x8.extend_low_i8x16_u (local.get $hi)) (v128.load8x8_s offset=112 (local.get $x)))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.dot_i16x8_s
          (i16x8.extend_high_i8x16_u (local.get $hi)) (v128.load8x8_s offset=120 (local.get $x)))))
        (local.set $a0 (i32x4.add (local.get $a0) (local.get $a1)))
        (local.set $h0 (i32x4.add (local.get $h0) (local.get $h1)))
        (local.set $a0 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a0) (local.get $h0))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a0) (local.get $h0))))
;;#end
        ;; f += f32(Σ q·x − zp · Σ x) · s · xd, block b of the group in lane b
        (local.set $f (f32x4.add (local.get $f)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s
                (i32x4.sub (local.get $a0)
                  (i32x4.mul
                    (i32x4.extend_low_i16x8_u
                      (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wq))))
                    (v128.load offset=144 (local.get $x)))))
              (v128.load offset=64 (local.get $wq)))
            (v128.load offset=128 (local.get $x)))))
        (local.set $wq (i32.add (local.get $wq) (i32.const 336)))
        (local.set $x (i32.add (local.get $x) (i32.const 160)))
        (br $groups)))
    (f32.store (local.get $out) (call $hsum (local.get $f)))
  )


;;#if relaxed
  ;; Two weight rows (at wq and wq + 84, in one panel) · one activation row, stored at out and out + 4:
  ;; each 16 activation bytes are loaded once for both rows, and the two rows are two streams
  ;; for the memory system. As $q4_tile1 otherwise (the same sums, bit for bit).
  (func $q4_tile1x2
    (param $wq i32) (param $kb i32) (param $x i32) (param $out i32)
    (local $end i32) (local $wr i32) (local $m v128) (local $xl v128) (local $xh v128)
    (local $p v128) (local $q v128) (local $a0 v128) (local $a1 v128) (local $b0 v128)
    (local $b1 v128) (local $sx v128) (local $dx v128) (local $f v128) (local $g v128)
    (local.set $wr (i32.add (local.get $wq) (i32.const 84)))
    (local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))
    (local.set $m (i8x16.splat (i32.const 15)))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $wq) (local.get $end)))
        (local.set $xl (v128.load (local.get $x)))
        (local.set $xh (v128.load offset=64 (local.get $x)))
        (local.set $p (v128.load (local.get $wq)))
        (local.set $q (v128.load (local.get $wr)))
        (local.set $a0 (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xl)
          (v128.and (local.get $p) (local.get $m))))
        (local.set $a1 (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xh)
          (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m))))
        (local.set $b0 (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xl)
          (v128.and (local.get $q) (local.get $m))))
        (local.set $b1 (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xh)
          (v128.and (i16x8.shr_u (local.get $q) (i32.const 4)) (local.get $m))))
        (local.set $xl (v128.load offset=16 (local.get $x)))
        (local.set $xh (v128.load offset=80 (local.get $x)))
        (local.set $p (v128.load offset=16 (local.get $wq)))
        (local.set $q (v128.load offset=16 (local.get $wr)))
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xl) (v128.and (local.get $p) (local.get $m)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xh) (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))))
        (local.set $b0 (i16x8.add (local.get $b0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xl) (v128.and (local.get $q) (local.get $m)))))
        (local.set $b1 (i16x8.add (local.get $b1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xh) (v128.and (i16x8.shr_u (local.get $q) (i32.const 4)) (local.get $m)))))
        (local.set $xl (v128.load offset=32 (local.get $x)))
        (local.set $xh (v128.load offset=96 (local.get $x)))
        (local.set $p (v128.load offset=32 (local.get $wq)))
        (local.set $q (v128.load offset=32 (local.get $wr)))
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xl) (v128.and (local.get $p) (local.get $m)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xh) (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))))
        (local.set $b0 (i16x8.add (local.get $b0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xl) (v128.and (local.get $q) (local.get $m)))))
        (local.set $b1 (i16x8.add (local.get $b1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xh) (v128.and (i16x8.shr_u (local.get $q) (i32.const 4)) (local.get $m)))))
        (local.set $xl (v128.load offset=48 (local.get $x)))
        (local.set $xh (v128.load offset=112 (local.get $x)))
        (local.set $p (v128.load offset=48 (local.get $wq)))
        (local.set $q (v128.load offset=48 (local.get $wr)))
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xl) (v128.and (local.get $p) (local.get $m)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xh) (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))))
        (local.set $b0 (i16x8.add (local.get $b0) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xl) (v128.and (local.get $q) (local.get $m)))))
        (local.set $b1 (i16x8.add (local.get $b1) (i16x8.relaxed_dot_i8x16_i7x16_s
          (local.get $xh) (v128.and (i16x8.shr_u (local.get $q) (i32.const 4)) (local.get $m)))))
        (local.set $a0 (i32x4.extadd_pairwise_i16x8_s (i16x8.add (local.get $a0) (local.get $a1))))
        (local.set $b0 (i32x4.extadd_pairwise_i16x8_s (i16x8.add (local.get $b0) (local.get $b1))))
        (local.set $sx (v128.load offset=144 (local.get $x)))
        (local.set $dx (v128.load offset=128 (local.get $x)))
        (local.set $f (f32x4.add (local.get $f)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s
                (i32x4.sub (local.get $a0)
                  (i32x4.mul
                    (i32x4.extend_low_i16x8_u
                      (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wq))))
                    (local.get $sx))))
              (v128.load offset=64 (local.get $wq)))
            (local.get $dx))))
        (local.set $g (f32x4.add (local.get $g)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s
                (i32x4.sub (local.get $b0)
                  (i32x4.mul
                    (i32x4.extend_low_i16x8_u
                      (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wr))))
                    (local.get $sx))))
              (v128.load offset=64 (local.get $wr)))
            (local.get $dx))))
        (local.set $wq (i32.add (local.get $wq) (i32.const 336)))
        (local.set $wr (i32.add (local.get $wr) (i32.const 336)))
        (local.set $x (i32.add (local.get $x) (i32.const 160)))
        (br $groups)))
    ;; out[0], out[1]: the two rows' sums, (0+1)+(2+3) as $hsum adds them, in one store
    (local.set $f (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f) (local.get $g))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f) (local.get $g))))
    (v128.store64_lane 0 (local.get $out) (f32x4.add (local.get $f)
      (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $f) (local.get $f))))
  )
;;#else
  ;; Two weight rows (at wq and wq + 84, in one panel) · one activation row, stored at out and out + 4:
  ;; the activations are loaded (and widened) once for both rows, and the two rows are two
  ;; streams for the memory system. As $q4_tile1 otherwise.
  (func $q4_tile1x2
    (param $wq i32) (param $kb i32) (param $x i32) (param $out i32)
    (local $end i32) (local $wr i32) (local $p v128) (local $lo v128) (local $hi v128)
    (local $m v128) (local $xl v128) (local $xh v128)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local $a0 v128) (local $a1 v128) (local $b0 v128) (local $b1 v128)
    (local $sx v128) (local $dx v128) (local $f v128) (local $g v128)
    (local.set $wr (i32.add (local.get $wq) (i32.const 84)))
    (local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))
    (local.set $m (i8x16.splat (i32.const 15)))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $wq) (local.get $end)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $b0 (v128.const i32x4 0 0 0 0))
        (local.set $b1 (v128.const i32x4 0 0 0 0))
        (local.set $x0 (v128.load8x8_s (local.get $x)))
        (local.set $x1 (v128.load8x8_s offset=8 (local.get $x)))
        (local.set $x2 (v128.load8x8_s offset=64 (local.get $x)))
        (local.set $x3 (v128.load8x8_s offset=72 (local.get $x)))
        (local.set $p (v128.load (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $p (v128.load (local.get $wr)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $b0 (i32x4.add (local.get $b0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $b1 (i32x4.add (local.get $b1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $x0 (v128.load8x8_s offset=16 (local.get $x)))
        (local.set $x1 (v128.load8x8_s offset=24 (local.get $x)))
        (local.set $x2 (v128.load8x8_s offset=80 (local.get $x)))
        (local.set $x3 (v128.load8x8_s offset=88 (local.get $x)))
        (local.set $p (v128.load offset=16 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $p (v128.load offset=16 (local.get $wr)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $b0 (i32x4.add (local.get $b0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $b1 (i32x4.add (local.get $b1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $x0 (v128.load8x8_s offset=32 (local.get $x)))
        (local.set $x1 (v128.load8x8_s offset=40 (local.get $x)))
        (local.set $x2 (v128.load8x8_s offset=96 (local.get $x)))
        (local.set $x3 (v128.load8x8_s offset=104 (local.get $x)))
        (local.set $p (v128.load offset=32 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $p (v128.load offset=32 (local.get $wr)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $b0 (i32x4.add (local.get $b0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $b1 (i32x4.add (local.get $b1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $x0 (v128.load8x8_s offset=48 (local.get $x)))
        (local.set $x1 (v128.load8x8_s offset=56 (local.get $x)))
        (local.set $x2 (v128.load8x8_s offset=112 (local.get $x)))
        (local.set $x3 (v128.load8x8_s offset=120 (local.get $x)))
        (local.set $p (v128.load offset=48 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        (local.set $p (v128.load offset=48 (local.get $wr)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $b0 (i32x4.add (local.get $b0) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $x0))
          (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $x2)))))
        (local.set $b1 (i32x4.add (local.get $b1) (i32x4.add
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $x1))
          (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $x3)))))
        ;; lanes of a0, b0: blocks 0, 0, 1, 1; of a1, b1: 2, 2, 3, 3
        (local.set $a0 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a0) (local.get $a1))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a0) (local.get $a1))))
        (local.set $b0 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $b0) (local.get $b1))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $b0) (local.get $b1))))
        (local.set $sx (v128.load offset=144 (local.get $x)))
        (local.set $dx (v128.load offset=128 (local.get $x)))
        (local.set $f (f32x4.add (local.get $f)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s
                (i32x4.sub (local.get $a0)
                  (i32x4.mul
                    (i32x4.extend_low_i16x8_u
                      (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wq))))
                    (local.get $sx))))
              (v128.load offset=64 (local.get $wq)))
            (local.get $dx))))
        (local.set $g (f32x4.add (local.get $g)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s
                (i32x4.sub (local.get $b0)
                  (i32x4.mul
                    (i32x4.extend_low_i16x8_u
                      (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wr))))
                    (local.get $sx))))
              (v128.load offset=64 (local.get $wr)))
            (local.get $dx))))
        (local.set $wq (i32.add (local.get $wq) (i32.const 336)))
        (local.set $wr (i32.add (local.get $wr) (i32.const 336)))
        (local.set $x (i32.add (local.get $x) (i32.const 160)))
        (br $groups)))
    ;; out[0], out[1]: the two rows' sums, (0+1)+(2+3) as $hsum adds them, in one store
    (local.set $f (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f) (local.get $g))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f) (local.get $g))))
    (v128.store64_lane 0 (local.get $out) (f32x4.add (local.get $f)
      (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $f) (local.get $f))))
  )
;;#end

  ;; One weight row · 4 activation rows (x at the first, the others 40 · kb bytes apart),
  ;; stored at out + 4 · ldo · (0..3): each 16 weight bytes are loaded and
  ;; unpacked once for the 4.
  (func $q4_tile4
    (param $wq i32) (param $kb i32) (param $x i32) (param $out i32) (param $ldo i32)
    (local $end i32) (local $xst i32) (local $x1 i32) (local $x2 i32) (local $x3 i32)
    (local $p v128) (local $lo v128) (local $hi v128) (local $m v128) (local $zp v128)
    (local $sc v128)
    (local $w0 v128) (local $w1 v128) (local $w2 v128) (local $w3 v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $h0 v128) (local $h1 v128) (local $h2 v128) (local $h3 v128)
    (local $f0 v128) (local $f1 v128) (local $f2 v128) (local $f3 v128)
    (local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))
    (local.set $xst (i32.mul (local.get $kb) (i32.const 40)))
    (local.set $x1 (i32.add (local.get $x) (local.get $xst)))
    (local.set $x2 (i32.add (local.get $x1) (local.get $xst)))
    (local.set $x3 (i32.add (local.get $x2) (local.get $xst)))
    (local.set $m (i8x16.splat (i32.const 15)))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $wq) (local.get $end)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
;;#if simd128
        (local.set $h0 (v128.const i32x4 0 0 0 0))
        (local.set $h1 (v128.const i32x4 0 0 0 0))
        (local.set $h2 (v128.const i32x4 0 0 0 0))
        (local.set $h3 (v128.const i32x4 0 0 0 0))
;;#end
        ;; bytes 0..15 of the group's weights
        (local.set $p (v128.load (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
;;#if relaxed
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load (local.get $x)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=64 (local.get $x)) (local.get $hi)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load (local.get $x1)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=64 (local.get $x1)) (local.get $hi)))))
        (local.set $a2 (i16x8.add (local.get $a2) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load (local.get $x2)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=64 (local.get $x2)) (local.get $hi)))))
        (local.set $a3 (i16x8.add (local.get $a3) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load (local.get $x3)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=64 (local.get $x3)) (local.get $hi)))))
;;#else
        (local.set $w0 (i16x8.extend_low_i8x16_u (local.get $lo)))
        (local.set $w1 (i16x8.extend_high_i8x16_u (local.get $lo)))
        (local.set $w2 (i16x8.extend_low_i8x16_u (local.get $hi)))
        (local.set $w3 (i16x8.extend_high_i8x16_u (local.get $hi)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=64 (local.get $x))))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=8 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=72 (local.get $x))))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=64 (local.get $x1))))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=8 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=72 (local.get $x1))))))
        (local.set $a2 (i32x4.add (local.get $a2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=64 (local.get $x2))))))
        (local.set $h2 (i32x4.add (local.get $h2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=8 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=72 (local.get $x2))))))
        (local.set $a3 (i32x4.add (local.get $a3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=64 (local.get $x3))))))
        (local.set $h3 (i32x4.add (local.get $h3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=8 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=72 (local.get $x3))))))
;;#end
        ;; bytes 16..31 of the group's weights
        (local.set $p (v128.load offset=16 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
;;#if relaxed
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=16 (local.get $x)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=80 (local.get $x)) (local.get $hi)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=16 (local.get $x1)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=80 (local.get $x1)) (local.get $hi)))))
        (local.set $a2 (i16x8.add (local.get $a2) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=16 (local.get $x2)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=80 (local.get $x2)) (local.get $hi)))))
        (local.set $a3 (i16x8.add (local.get $a3) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=16 (local.get $x3)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=80 (local.get $x3)) (local.get $hi)))))
;;#else
        (local.set $w0 (i16x8.extend_low_i8x16_u (local.get $lo)))
        (local.set $w1 (i16x8.extend_high_i8x16_u (local.get $lo)))
        (local.set $w2 (i16x8.extend_low_i8x16_u (local.get $hi)))
        (local.set $w3 (i16x8.extend_high_i8x16_u (local.get $hi)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=16 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=80 (local.get $x))))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=24 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=88 (local.get $x))))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=16 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=80 (local.get $x1))))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=24 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=88 (local.get $x1))))))
        (local.set $a2 (i32x4.add (local.get $a2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=16 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=80 (local.get $x2))))))
        (local.set $h2 (i32x4.add (local.get $h2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=24 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=88 (local.get $x2))))))
        (local.set $a3 (i32x4.add (local.get $a3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=16 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=80 (local.get $x3))))))
        (local.set $h3 (i32x4.add (local.get $h3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=24 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=88 (local.get $x3))))))
;;#end
        ;; bytes 32..47 of the group's weights
        (local.set $p (v128.load offset=32 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
;;#if relaxed
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=32 (local.get $x)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=96 (local.get $x)) (local.get $hi)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=32 (local.get $x1)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=96 (local.get $x1)) (local.get $hi)))))
        (local.set $a2 (i16x8.add (local.get $a2) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=32 (local.get $x2)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=96 (local.get $x2)) (local.get $hi)))))
        (local.set $a3 (i16x8.add (local.get $a3) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=32 (local.get $x3)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=96 (local.get $x3)) (local.get $hi)))))
;;#else
        (local.set $w0 (i16x8.extend_low_i8x16_u (local.get $lo)))
        (local.set $w1 (i16x8.extend_high_i8x16_u (local.get $lo)))
        (local.set $w2 (i16x8.extend_low_i8x16_u (local.get $hi)))
        (local.set $w3 (i16x8.extend_high_i8x16_u (local.get $hi)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=32 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=96 (local.get $x))))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=40 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=104 (local.get $x))))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=32 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=96 (local.get $x1))))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=40 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=104 (local.get $x1))))))
        (local.set $a2 (i32x4.add (local.get $a2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=32 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=96 (local.get $x2))))))
        (local.set $h2 (i32x4.add (local.get $h2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=40 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=104 (local.get $x2))))))
        (local.set $a3 (i32x4.add (local.get $a3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=32 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=96 (local.get $x3))))))
        (local.set $h3 (i32x4.add (local.get $h3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=40 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=104 (local.get $x3))))))
;;#end
        ;; bytes 48..63 of the group's weights
        (local.set $p (v128.load offset=48 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
;;#if relaxed
        (local.set $a0 (i16x8.add (local.get $a0) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=48 (local.get $x)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=112 (local.get $x)) (local.get $hi)))))
        (local.set $a1 (i16x8.add (local.get $a1) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=48 (local.get $x1)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=112 (local.get $x1)) (local.get $hi)))))
        (local.set $a2 (i16x8.add (local.get $a2) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=48 (local.get $x2)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=112 (local.get $x2)) (local.get $hi)))))
        (local.set $a3 (i16x8.add (local.get $a3) (i16x8.add
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=48 (local.get $x3)) (local.get $lo))
          (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=112 (local.get $x3)) (local.get $hi)))))
;;#else
        (local.set $w0 (i16x8.extend_low_i8x16_u (local.get $lo)))
        (local.set $w1 (i16x8.extend_high_i8x16_u (local.get $lo)))
        (local.set $w2 (i16x8.extend_low_i8x16_u (local.get $hi)))
        (local.set $w3 (i16x8.extend_high_i8x16_u (local.get $hi)))
        (local.set $a0 (i32x4.add (local.get $a0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=48 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=112 (local.get $x))))))
        (local.set $h0 (i32x4.add (local.get $h0) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=56 (local.get $x)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=120 (local.get $x))))))
        (local.set $a1 (i32x4.add (local.get $a1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=48 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=112 (local.get $x1))))))
        (local.set $h1 (i32x4.add (local.get $h1) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=56 (local.get $x1)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=120 (local.get $x1))))))
        (local.set $a2 (i32x4.add (local.get $a2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=48 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=112 (local.get $x2))))))
        (local.set $h2 (i32x4.add (local.get $h2) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=56 (local.get $x2)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=120 (local.get $x2))))))
        (local.set $a3 (i32x4.add (local.get $a3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w0) (v128.load8x8_s offset=48 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w2) (v128.load8x8_s offset=112 (local.get $x3))))))
        (local.set $h3 (i32x4.add (local.get $h3) (i32x4.add
          (i32x4.dot_i16x8_s (local.get $w1) (v128.load8x8_s offset=56 (local.get $x3)))
          (i32x4.dot_i16x8_s (local.get $w3) (v128.load8x8_s offset=120 (local.get $x3))))))
;;#end
;;#if relaxed
        ;; 8 exact i16 pair sums per lane (as in $q4_tile1); i32 lane b: block b
        (local.set $a0 (i32x4.extadd_pairwise_i16x8_s (local.get $a0)))
        (local.set $a1 (i32x4.extadd_pairwise_i16x8_s (local.get $a1)))
        (local.set $a2 (i32x4.extadd_pairwise_i16x8_s (local.get $a2)))
        (local.set $a3 (i32x4.extadd_pairwise_i16x8_s (local.get $a3)))
;;#else
        ;; lanes of a: blocks 0, 0, 1, 1; of h: 2, 2, 3, 3
        (local.set $a0 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a0) (local.get $h0))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a0) (local.get $h0))))
        (local.set $a1 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a1) (local.get $h1))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a1) (local.get $h1))))
        (local.set $a2 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a2) (local.get $h2))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a2) (local.get $h2))))
        (local.set $a3 (i32x4.add
          (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a3) (local.get $h3))
          (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a3) (local.get $h3))))
;;#end
        (local.set $zp (i32x4.extend_low_i16x8_u
          (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wq)))))
        (local.set $sc (v128.load offset=64 (local.get $wq)))
        (local.set $f0 (f32x4.add (local.get $f0)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a0)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x)))))
        (local.set $f1 (f32x4.add (local.get $f1)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a1)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x1)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x1)))))
        (local.set $f2 (f32x4.add (local.get $f2)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a2)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x2)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x2)))))
        (local.set $f3 (f32x4.add (local.get $f3)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a3)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x3)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x3)))))
        (local.set $wq (i32.add (local.get $wq) (i32.const 336)))
        (local.set $x (i32.add (local.get $x) (i32.const 160)))
        (local.set $x1 (i32.add (local.get $x1) (i32.const 160)))
        (local.set $x2 (i32.add (local.get $x2) (i32.const 160)))
        (local.set $x3 (i32.add (local.get $x3) (i32.const 160)))
        (br $groups)))
    ;; $hsum of f0..f3 at once, lane j of f0 for fj: [f0.0 + f0.1, f1.0 + f1.1, f0.2 + f0.3,
    ;; f1.2 + f1.3] (and f2, f3 in f2), then lane j (fj.0 + fj.1) + (fj.2 + fj.3)
    (local.set $f0 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f0) (local.get $f1))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f0) (local.get $f1))))
    (local.set $f2 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f2) (local.get $f3))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f2) (local.get $f3))))
    (local.set $f0 (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $f0) (local.get $f2))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $f0) (local.get $f2))))
    (local.set $ldo (i32.shl (local.get $ldo) (i32.const 2)))
    (v128.store32_lane 0 (local.get $out) (local.get $f0))
    (local.set $out (i32.add (local.get $out) (local.get $ldo)))
    (v128.store32_lane 1 (local.get $out) (local.get $f0))
    (local.set $out (i32.add (local.get $out) (local.get $ldo)))
    (v128.store32_lane 2 (local.get $out) (local.get $f0))
    (local.set $out (i32.add (local.get $out) (local.get $ldo)))
    (v128.store32_lane 3 (local.get $out) (local.get $f0))
  )

;;#if relaxed
  ;; Four weight rows (wq + 84·i, i < 4: a panel) · one activation row with the 16-bit form, stored at
  ;; out[0..3] (a decode step of one sequence where the i32 form is not one instruction): each
  ;; 32 activation bytes are loaded once for 4 rows, and the 4 rows' sums end in one store.
  ;; 1.06x $q4_tile1x2 in Node 24, 1.14x in Deno, on a matrix streamed from memory; of its
  ;; time, the nibbles' unpacking and the per-block epilogue take about a quarter each.
  ;; Each row's sums are $q4_tile1x2's, bit for bit (the i16 lanes are exact).
  ;;#tile q4_tile1x4

  ;; Two weight rows (at wq and wq + 84, in one panel) · 4 activation rows with the 16-bit form, stored at
  ;; out[j·ldo] and out[j·ldo + 1]: $q4_tile4x2_dot's tile where the i32 form is not one
  ;; instruction (x86 without AVX-VNNI, where V8 lowers the 16-bit form to one pmaddubsw): each
  ;; activation vector is loaded once for both rows, not once per row as two calls of $q4_tile4
  ;; load it, and each activation row's block sums and scales once for both rows' epilogues
  ;; (1.03-1.06x against loading them per row). Each row's sums are $q4_tile4's, in the same
  ;; order (the i16 lanes are exact).
  ;;#tile q4_tile4x2

  ;; The same for 3 activation rows (the last 3 of a prompt chunk, decode batches of 3), where
  ;; $q4_tile1x2 scored one activation row at a time: $q4_tile3x2_dot in the 16-bit form. Each
  ;; row's sums are $q4_tile1x2's.
  ;;#tile q4_tile3x2

  ;; And for 2 activation rows (the last 2 of a chunk, decode batches of 2).
  ;;#tile q4_tile2x2

  ;; $q4_tile1x4 and $q4_tile{4,3,2}x2 with each group's four 16-byte steps as a loop ($looped)
  ;;#tile q4_tile1x4_loop
  ;;#tile q4_tile4x2_loop
  ;;#tile q4_tile3x2_loop
  ;;#tile q4_tile2x2_loop

;;#end

;;#if relaxed
  ;; Two weight rows (at wq and wq + 84, in one panel) · 4 activation rows with the i32 form, stored at
  ;; out[j·ldo] and out[j·ldo + 1]: each activation vector is loaded once for both rows (in Deno,
  ;; which bounds-checks every load, the loads are what a tile of one row waits on: 1.12-1.19x
  ;; $q4_tile4_dot on a prompt's GEMM). Each row's sums are $q4_tile4_dot's, in the same order.
  ;;#tile q4_tile4x2_dot

  ;; $q4_tile4 with the i32 form of the dot product (one i32x4.relaxed_dot_i8x16_i7x16_add_s per
  ;; 16 weights and row: i32 lane b sums block b, exact in any lowering since the unsigned
  ;; operand is a nibble). q4_rows calls it when $dot_add is set: where the runtime lowers the
  ;; i32 form to one AVX-VNNI vpdpbusd. A function of its own, not a branch in $q4_tile4's loop:
  ;; a branch there made Node 20 stream large matrices 1.5x slower.
  (func $q4_tile4_dot
    (param $wq i32) (param $kb i32) (param $x i32) (param $out i32) (param $ldo i32)
    (local $end i32) (local $xst i32) (local $x1 i32) (local $x2 i32) (local $x3 i32)
    (local $p v128) (local $lo v128) (local $hi v128) (local $m v128) (local $zp v128)
    (local $sc v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $f0 v128) (local $f1 v128) (local $f2 v128) (local $f3 v128)
    (local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))
    (local.set $xst (i32.mul (local.get $kb) (i32.const 40)))
    (local.set $x1 (i32.add (local.get $x) (local.get $xst)))
    (local.set $x2 (i32.add (local.get $x1) (local.get $xst)))
    (local.set $x3 (i32.add (local.get $x2) (local.get $xst)))
    (local.set $m (i8x16.splat (i32.const 15)))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $wq) (local.get $end)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        ;; bytes 0..15 of the group's weights
        (local.set $p (v128.load (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=64 (local.get $x)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load (local.get $x)) (local.get $lo) (local.get $a0))))
        (local.set $a1 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=64 (local.get $x1)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load (local.get $x1)) (local.get $lo) (local.get $a1))))
        (local.set $a2 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=64 (local.get $x2)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load (local.get $x2)) (local.get $lo) (local.get $a2))))
        (local.set $a3 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=64 (local.get $x3)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load (local.get $x3)) (local.get $lo) (local.get $a3))))
        ;; bytes 16..31 of the group's weights
        (local.set $p (v128.load offset=16 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=80 (local.get $x)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=16 (local.get $x)) (local.get $lo) (local.get $a0))))
        (local.set $a1 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=80 (local.get $x1)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=16 (local.get $x1)) (local.get $lo) (local.get $a1))))
        (local.set $a2 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=80 (local.get $x2)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=16 (local.get $x2)) (local.get $lo) (local.get $a2))))
        (local.set $a3 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=80 (local.get $x3)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=16 (local.get $x3)) (local.get $lo) (local.get $a3))))
        ;; bytes 32..47 of the group's weights
        (local.set $p (v128.load offset=32 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=96 (local.get $x)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=32 (local.get $x)) (local.get $lo) (local.get $a0))))
        (local.set $a1 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=96 (local.get $x1)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=32 (local.get $x1)) (local.get $lo) (local.get $a1))))
        (local.set $a2 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=96 (local.get $x2)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=32 (local.get $x2)) (local.get $lo) (local.get $a2))))
        (local.set $a3 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=96 (local.get $x3)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=32 (local.get $x3)) (local.get $lo) (local.get $a3))))
        ;; bytes 48..63 of the group's weights
        (local.set $p (v128.load offset=48 (local.get $wq)))
        (local.set $lo (v128.and (local.get $p) (local.get $m)))
        (local.set $hi (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))
        (local.set $a0 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=112 (local.get $x)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=48 (local.get $x)) (local.get $lo) (local.get $a0))))
        (local.set $a1 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=112 (local.get $x1)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=48 (local.get $x1)) (local.get $lo) (local.get $a1))))
        (local.set $a2 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=112 (local.get $x2)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=48 (local.get $x2)) (local.get $lo) (local.get $a2))))
        (local.set $a3 (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=112 (local.get $x3)) (local.get $hi)
          (i32x4.relaxed_dot_i8x16_i7x16_add_s (v128.load offset=48 (local.get $x3)) (local.get $lo) (local.get $a3))))
        (local.set $zp (i32x4.extend_low_i16x8_u
          (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $wq)))))
        (local.set $sc (v128.load offset=64 (local.get $wq)))
        (local.set $f0 (f32x4.add (local.get $f0)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a0)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x)))))
        (local.set $f1 (f32x4.add (local.get $f1)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a1)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x1)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x1)))))
        (local.set $f2 (f32x4.add (local.get $f2)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a2)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x2)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x2)))))
        (local.set $f3 (f32x4.add (local.get $f3)
          (f32x4.mul
            (f32x4.mul
              (f32x4.convert_i32x4_s (i32x4.sub (local.get $a3)
                (i32x4.mul (local.get $zp) (v128.load offset=144 (local.get $x3)))))
              (local.get $sc))
            (v128.load offset=128 (local.get $x3)))))
        (local.set $wq (i32.add (local.get $wq) (i32.const 336)))
        (local.set $x (i32.add (local.get $x) (i32.const 160)))
        (local.set $x1 (i32.add (local.get $x1) (i32.const 160)))
        (local.set $x2 (i32.add (local.get $x2) (i32.const 160)))
        (local.set $x3 (i32.add (local.get $x3) (i32.const 160)))
        (br $groups)))
    ;; $hsum of f0..f3 at once, lane j of f0 for fj: [f0.0 + f0.1, f1.0 + f1.1, f0.2 + f0.3,
    ;; f1.2 + f1.3] (and f2, f3 in f2), then lane j (fj.0 + fj.1) + (fj.2 + fj.3)
    (local.set $f0 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f0) (local.get $f1))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f0) (local.get $f1))))
    (local.set $f2 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f2) (local.get $f3))
      (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f2) (local.get $f3))))
    (local.set $f0 (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $f0) (local.get $f2))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $f0) (local.get $f2))))
    (local.set $ldo (i32.shl (local.get $ldo) (i32.const 2)))
    (v128.store32_lane 0 (local.get $out) (local.get $f0))
    (local.set $out (i32.add (local.get $out) (local.get $ldo)))
    (v128.store32_lane 1 (local.get $out) (local.get $f0))
    (local.set $out (i32.add (local.get $out) (local.get $ldo)))
    (v128.store32_lane 2 (local.get $out) (local.get $f0))
    (local.set $out (i32.add (local.get $out) (local.get $ldo)))
    (v128.store32_lane 3 (local.get $out) (local.get $f0))
  )

  ;; Two weight rows (at wq and wq + 84, in one panel) · 3 activation rows with the i32 form, stored at
  ;; out[j·ldo] and out[j·ldo + 1] (j < 3): $q4_tile4x2_dot for the last 3 rows of a prompt
  ;; chunk and decode batches of 3, where $q4_tile1x2 scored one activation row at a time, each
  ;; unpacked weight vector used for one row only (a GEMM of 3 rows: 1.4x). Each row's sums are
  ;; $q4_tile4x2_dot's, in the same order.
  ;;#tile q4_tile3x2_dot

  ;; The same for 2 activation rows (the last 2 of a chunk, decode batches of 2): 1.3x
  ;; $q4_tile1x2 twice on a GEMM of 2 rows.
  ;;#tile q4_tile2x2_dot

  ;; And for 1 activation row (the decode step of one sequence, the last row of a chunk): the
  ;; i32 form where $q4_tile1x2 takes the 16-bit one. A decode step of the 0.5B q4 package:
  ;; 1.05x in Node 24, 1.12x in Deno (separate processes in turns).
  ;;#tile q4_tile1x2_dot
;;#end

  ;; (f[0] + f[1]) + (f[2] + f[3])
  (func $hsum (param $f v128) (result f32)
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $f)) (f32x4.extract_lane 1 (local.get $f)))
      (f32.add (f32x4.extract_lane 2 (local.get $f)) (f32x4.extract_lane 3 (local.get $f)))))

  ;; Weight rows [v0, v1) · n activation rows, two rows at a time: each row is read from memory
  ;; once (then from L1) for tiles of 4 activation rows (in the relaxed build both rows in one
  ;; tile, $q4_tile4x2_dot or $q4_tile4x2, each activation vector loaded once for the pair; in
  ;; the SIMD128 build a $q4_tile4 a row), and the last n mod 4 activation rows
  ;; one at a time against both weight rows at once ($q4_tile1x2: half the activation loads, and
  ;; where the runtime bounds-checks every load, as Deno does, half their checks), or with the
  ;; i32 form all at once ($q4_tile{3,2,1}x2_dot).
  ;;
  ;; The rows are in the kernels' placement (q4-b32.ts, Q4_PANEL_ROWS): panels of 4 rows, 84·kb
  ;; bytes each, whose groups are interleaved, so row v's group g is at
  ;; (v >> 2)·84·kb + 336·g + 84·(v & 3), and a tile walks its rows' groups 336 bytes at a time.
  ;; The rows of a pair are in one panel ((v & 3) < 3: row v + 1 is 84 bytes after row v), a
  ;; tile of 4 rows is a whole panel. A tile of 4 rows then reads one sequential stream, which
  ;; the hardware prefetchers follow: no lines are touched ahead ($touch_rows), which rows
  ;; stored one after another needed (4 streams that the prefetchers did not follow), and a
  ;; decode step of the 0.5B q4 package runs its products 1.3-1.4x faster.
  (func $q4_rows
    (param $w i32) (param $kb i32) (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $n i32) (param $out i32) (param $ldo i32)
    (local $v i32) (local $j i32) (local $row i32) (local $panel i32) (local $xst i32)
    (local $pair i32) (local $o i32) (local $xj i32)
    (local.set $panel (i32.mul (local.get $kb) (i32.const 84)))
    (local.set $xst (i32.mul (local.get $kb) (i32.const 40)))
    (local.set $v (local.get $v0))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $v) (local.get $v1)))
        (local.set $pair (i32.and (i32.lt_u (i32.add (local.get $v) (i32.const 1)) (local.get $v1))
          (i32.ne (i32.and (local.get $v) (i32.const 3)) (i32.const 3))))
        (local.set $row (i32.add (local.get $w)
          (i32.add (i32.mul (i32.shr_u (local.get $v) (i32.const 2)) (local.get $panel))
            (i32.mul (i32.and (local.get $v) (i32.const 3)) (i32.const 84)))))
;;#if relaxed
        ;; one activation row in the 16-bit form: a whole panel at a time while one is left
        (if (i32.and (i32.eq (local.get $n) (i32.const 1))
              (i32.and (i32.eqz (global.get $dot_add))
                (i32.and (i32.eqz (i32.and (local.get $v) (i32.const 3)))
                  (i32.le_u (i32.add (local.get $v) (i32.const 4)) (local.get $v1)))))
          (then
            (if (global.get $looped)
              (then (call $q4_tile1x4_loop (local.get $row) (local.get $kb) (local.get $x)
                (i32.add (local.get $out) (i32.shl (local.get $v) (i32.const 2)))))
              (else (call $q4_tile1x4 (local.get $row) (local.get $kb) (local.get $x)
                (i32.add (local.get $out) (i32.shl (local.get $v) (i32.const 2))))))
            (local.set $v (i32.add (local.get $v) (i32.const 4)))
            (br $rows)))
;;#end
        (local.set $j (i32.const 0))
        (block $tiles_done
          (loop $tiles
            (br_if $tiles_done (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $n)))
            (local.set $o (i32.add (local.get $out) (i32.shl
              (i32.add (i32.mul (local.get $j) (local.get $ldo)) (local.get $v)) (i32.const 2))))
            (local.set $xj (i32.add (local.get $x) (i32.mul (local.get $j) (local.get $xst))))
;;#if relaxed
            (if (global.get $dot_add)
              (then
                (if (local.get $pair)
                  (then
                    (call $q4_tile4x2_dot (local.get $row) (local.get $kb) (local.get $xj)
                      (local.get $o) (local.get $ldo)))
                  (else
                    (call $q4_tile4_dot (local.get $row) (local.get $kb) (local.get $xj)
                      (local.get $o) (local.get $ldo)))))
              (else
                (if (local.get $pair)
                  (then
                    (if (global.get $looped)
                      (then (call $q4_tile4x2_loop (local.get $row) (local.get $kb) (local.get $xj)
                        (local.get $o) (local.get $ldo)))
                      (else (call $q4_tile4x2 (local.get $row) (local.get $kb) (local.get $xj)
                        (local.get $o) (local.get $ldo)))))
                  (else
                    (call $q4_tile4 (local.get $row) (local.get $kb) (local.get $xj)
                      (local.get $o) (local.get $ldo))))))
;;#else
            (call $q4_tile4 (local.get $row) (local.get $kb) (local.get $xj)
              (local.get $o) (local.get $ldo))
            (if (local.get $pair)
              (then
                (call $q4_tile4 (i32.add (local.get $row) (i32.const 84)) (local.get $kb)
                  (local.get $xj) (i32.add (local.get $o) (i32.const 4)) (local.get $ldo))))
;;#end
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $tiles)))
        (block $ones_done
          (loop $ones
            (br_if $ones_done (i32.ge_u (local.get $j) (local.get $n)))
            (local.set $o (i32.add (local.get $out) (i32.shl
              (i32.add (i32.mul (local.get $j) (local.get $ldo)) (local.get $v)) (i32.const 2))))
            (local.set $xj (i32.add (local.get $x) (i32.mul (local.get $j) (local.get $xst))))
;;#if relaxed
            ;; the last n − j rows (1 to 3) at once against the row pair: 3 or 2 in either form,
            ;; 1 with the i32 form where it is on (else $q4_tile1x2 below)
            (if (local.get $pair)
              (then
                (if (i32.eq (i32.sub (local.get $n) (local.get $j)) (i32.const 3))
                  (then
                    (if (global.get $dot_add)
                      (then (call $q4_tile3x2_dot (local.get $row) (local.get $kb) (local.get $xj)
                        (local.get $o) (local.get $ldo)))
                      (else
                        (if (global.get $looped)
                          (then (call $q4_tile3x2_loop (local.get $row) (local.get $kb)
                            (local.get $xj) (local.get $o) (local.get $ldo)))
                          (else (call $q4_tile3x2 (local.get $row) (local.get $kb)
                            (local.get $xj) (local.get $o) (local.get $ldo))))))
                    (br $ones_done)))
                (if (i32.eq (i32.sub (local.get $n) (local.get $j)) (i32.const 2))
                  (then
                    (if (global.get $dot_add)
                      (then (call $q4_tile2x2_dot (local.get $row) (local.get $kb) (local.get $xj)
                        (local.get $o) (local.get $ldo)))
                      (else
                        (if (global.get $looped)
                          (then (call $q4_tile2x2_loop (local.get $row) (local.get $kb)
                            (local.get $xj) (local.get $o) (local.get $ldo)))
                          (else (call $q4_tile2x2 (local.get $row) (local.get $kb)
                            (local.get $xj) (local.get $o) (local.get $ldo))))))
                    (br $ones_done)))
                (if (global.get $dot_add)
                  (then
                    (call $q4_tile1x2_dot (local.get $row) (local.get $kb) (local.get $xj)
                      (local.get $o))
                    (br $ones_done)))))
;;#end
            (if (local.get $pair)
              (then
                (call $q4_tile1x2 (local.get $row) (local.get $kb) (local.get $xj)
                  (local.get $o)))
              (else
                (call $q4_tile1 (local.get $row) (local.get $kb) (local.get $xj)
                  (local.get $o))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $ones)))
        (local.set $v (i32.add (local.get $v) (i32.add (local.get $pair) (i32.const 1))))
        (br $rows)))
  )

  ;; q4 rows · n activation rows, for decode: the weights stream through the cache once.
  (func (export "q4_gemv")
    (param $w i32) (param $kb i32) (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $n i32) (param $out i32) (param $ldo i32)
    (call $q4_rows (local.get $w) (local.get $kb) (local.get $v0) (local.get $v1)
      (local.get $x) (local.get $n) (local.get $out) (local.get $ldo))
  )

  ;; q4 rows · t activation rows, for prefill: weight rows in blocks of about 64 KiB (whole
  ;; panels of 4 rows, at least one), each block scored by every tile of 4 activation rows while
  ;; it is in cache (the tile itself, 4 · 40 · kb bytes, stays in L1), then by the last t mod 4.
  ;; The panels of a block are touched once before its first tile.
  (func (export "q4_gemm")
    (param $w i32) (param $kb i32) (param $v0 i32) (param $v1 i32)
    (param $x i32) (param $t i32) (param $out i32) (param $ldo i32)
    (local $rb i32) (local $vb i32) (local $ve i32) (local $j i32) (local $n i32)
    (local $panel i32) (local $p0 i32)
    (local.set $panel (i32.mul (local.get $kb) (i32.const 84)))
    (local.set $rb (i32.shl (i32.div_u (i32.const 65536) (local.get $panel)) (i32.const 2)))
    (if (i32.lt_u (local.get $rb) (i32.const 4)) (then (local.set $rb (i32.const 4))))
    (local.set $vb (local.get $v0))
    (block $done
      (loop $blocks
        (br_if $done (i32.ge_u (local.get $vb) (local.get $v1)))
        (local.set $ve (i32.add (local.get $vb) (local.get $rb)))
        (if (i32.gt_u (local.get $ve) (local.get $v1)) (then (local.set $ve (local.get $v1))))
        ;; panels vb >> 2 … (ve − 1) >> 2
        (local.set $p0 (i32.shr_u (local.get $vb) (i32.const 2)))
        (call $touch (i32.add (local.get $w) (i32.mul (local.get $p0) (local.get $panel)))
          (i32.mul (i32.sub (i32.add (i32.shr_u (i32.sub (local.get $ve) (i32.const 1)) (i32.const 2))
            (i32.const 1)) (local.get $p0)) (local.get $panel)))
        (local.set $j (i32.const 0))
        (block $tiles_done
          (loop $tiles
            (br_if $tiles_done (i32.ge_u (local.get $j) (local.get $t)))
            (local.set $n (i32.sub (local.get $t) (local.get $j)))
            (if (i32.gt_u (local.get $n) (i32.const 4)) (then (local.set $n (i32.const 4))))
            (call $q4_rows (local.get $w) (local.get $kb) (local.get $vb) (local.get $ve)
              (i32.add (local.get $x)
                (i32.mul (local.get $j) (i32.mul (local.get $kb) (i32.const 40))))
              (local.get $n)
              (i32.add (local.get $out)
                (i32.shl (i32.mul (local.get $j) (local.get $ldo)) (i32.const 2)))
              (local.get $ldo))
            (local.set $j (i32.add (local.get $j) (local.get $n)))
            (br $tiles)))
        (local.set $vb (local.get $ve))
        (br $blocks)))
  )
)
