/**
 * Generated functions of engine.wat: a line `;;#tile <name>` there stands for the function this
 * file writes for it, so a family of tiles that differ only in how many rows they score is one
 * function here, not several near-copies in WAT (which has no macros). Used by kernelSource
 * (kernel-variants.ts) after a variant is selected; pure (no Node APIs).
 *
 * - `$q4_tile<R>x2` and `$q4_tile<R>x2_dot` (pairTile): two q4 weight rows · R = 1..4
 *   activation rows.
 * - `$q4_tile1x4` (quadTile): four q4 weight rows · one activation row, the 16-bit form.
 * - `$q4_tile<R>x2_loop` and `$q4_tile1x4_loop`: the same tiles (16-bit form) with a group's
 *   four 16-byte steps as a loop, for V8 before 13 (see `looped` below).
 * - `$rows<n>` and `$store<n>` (rowsTile, storeTile): q8 rows · exactly n = 2..4 int16 vectors.
 *
 * The unrolling is a tile's speed: change it only with a measurement (scripts/bench/kernels.ts).
 */

/** The generated functions by name: each name's function, or undefined. */
export function tileSource(name: string): string | undefined {
  let m = /^q4_tile([1-4])x2(_dot|_loop)?$/.exec(name)
  if (m) return pairTile(Number(m[1]), m[2] === '_dot' ? 'i32' : 'i16', m[2] === '_loop')
  m = /^q4_tile1x4(_loop)?$/.exec(name)
  if (m) return quadTile(m[1] !== undefined)
  m = /^(rows|store)([2-4])$/.exec(name)
  if (m) return m[1] === 'rows' ? rowsTile(Number(m[2])) : storeTile(Number(m[2]))
  return undefined
}

/** Expands every `;;#tile <name>` line of a kernel source into that tile's function. */
export function expandTiles(wat: string): string {
  return wat
    .split('\n')
    .map((line, i) => {
      const directive = /^\s*;;#tile\b\s*(\S*)\s*$/.exec(line)
      if (!directive) return line
      const source = tileSource(directive[1])
      if (source === undefined)
        throw new Error(`line ${i + 1}: unknown tile ${JSON.stringify(directive[1])}`)
      return source
    })
    .join('\n')
}

/** `(local $a type) (local $b type) …` */
function locals(names: readonly string[], type: string): string {
  return names.map((n) => `(local $${n} ${type})`).join(' ')
}

/** A function's text, line by line. */
class Lines {
  private readonly lines: string[] = []
  /** Lines at `indent` spaces. */
  emit(indent: number, ...lines: string[]): void {
    this.lines.push(...lines.map((l) => ' '.repeat(indent) + l))
  }
  /** Closes the last line's expression with `n` more parentheses. */
  close(n: number): void {
    this.lines[this.lines.length - 1] += ')'.repeat(n)
  }
  toString(): string {
    return this.lines.join('\n')
  }
}

/**
 * The WAT of `$q4_tile<rows>x2` (form 'i16') or `$q4_tile<rows>x2_dot` (form 'i32'): two q4
 * weight rows (at wq and wq + 84, in one panel of the placement: a row's next group 336 bytes
 * on) · `rows` activation rows (a8-b32, 40·kb bytes apart), each row's two sums stored at
 * out[j·ldo] and out[j·ldo + 1]. Per group of 4 blocks (84 weight bytes a row, 160 activation
 * bytes): 4 loads of 16 bytes per weight row, split into low and high
 * nibbles once for every activation row, then the integer dot products and the group's float
 * epilogue, f += f32(Σ q·x − zp · Σ x) · s · xd (lane b: block b of the group).
 * - 'i16': `i16x8.relaxed_dot_i8x16_i7x16_s`, one pmaddubsw on x64 without AVX-VNNI. 8 exact
 *   i16 pair sums per lane (|Σ| ≤ 8 · 2 · 128 · 15 < 2^15), widened once per group; each
 *   activation row's block sums and scales are loaded once for both weight rows.
 * - 'i32': `i32x4.relaxed_dot_i8x16_i7x16_add_s`, one vpdpbusd with AVX-VNNI; its epilogue
 *   loads the activation sums and scales per weight row, as it was measured.
 *
 * `looped` (16-bit form, `$q4_tile<rows>x2_loop`): the group's four 16-byte steps run as a loop
 * of one step each (the sums start at zero), the same integers and the same epilogue. For V8
 * before 13 (Node 20-23), whose optimizing tier schedules every load of a loop body first:
 * there a prompt's GEMM ran at 31 GMAC/s unrolled and 38-40 looped; in Node 24 the loop
 * costs 7-8% (both tiles timed in one process; BENCHMARKS.md, "Looped tiles for V8 before
 * 13").
 */
export function pairTile(rows: number, form: 'i16' | 'i32', looped = false): string {
  const i16 = form === 'i16'
  if (looped && !i16) throw new Error('a looped pair tile is of the 16-bit form')
  const js = [...Array(rows).keys()]
  const x = (j: number) => (j === 0 ? '$x' : `$x${j}`)
  const perRow = (name: string) => js.map((j) => `${name}${j}`)
  const out = new Lines()
  const emit = out.emit.bind(out)

  emit(2, `(func $q4_tile${rows}x2${i16 ? (looped ? '_loop' : '') : '_dot'}`)
  emit(
    4,
    `(param $wq i32) (param $kb i32) (param $x i32) (param $out i32)${rows > 1 ? ' (param $ldo i32)' : ''}`,
  )
  const rowPtrs = rows > 1 ? ['xst', ...perRow('x').slice(1)] : []
  emit(4, locals(['end', ...rowPtrs, 'wr'], 'i32'))
  // looped: the step counter and the pointers a step advances (weights, each activation row)
  if (looped) emit(4, locals(['k', 'wk', 'wrk', ...perRow('y')], 'i32'))
  emit(4, locals(['p', 'la', 'ha', 'lb', 'hb', 'm'], 'v128'))
  emit(4, locals(['zp', 'sc', 'v', ...(i16 ? ['zq', 'sd', 'sx', 'dx'] : [])], 'v128'))
  // per activation row j: the i16/i32 sums a (row wq) and b (row wr), the float sums f and g
  for (const acc of ['a', 'b', 'f', 'g']) emit(4, locals(perRow(acc), 'v128'))

  emit(4, '(local.set $wr (i32.add (local.get $wq) (i32.const 84)))')
  emit(4, '(local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))')
  if (rows > 1) {
    emit(4, '(local.set $xst (i32.mul (local.get $kb) (i32.const 40)))')
    for (const j of js.slice(1))
      emit(4, `(local.set ${x(j)} (i32.add (local.get ${x(j - 1)}) (local.get $xst)))`)
  }
  emit(4, '(local.set $m (i8x16.splat (i32.const 15)))')
  emit(4, '(block $done', '  (loop $groups')
  emit(8, '(br_if $done (i32.ge_u (local.get $wq) (local.get $end)))')
  // the sums start at zero where every step adds to them: the i32 form, and the looped one
  if (!i16 || looped)
    for (const acc of ['a', 'b'])
      for (const j of js) emit(8, `(local.set $${acc}${j} (v128.const i32x4 0 0 0 0))`)

  // acc += the dot product of 16 activation bytes and 16 nibbles; `first`: the 16-bit form sets
  // the i16 sums from the group's first product instead of adding to zero (the same integers)
  const dot = (acc: string, nibbles: string, first: boolean) =>
    i16
      ? first
        ? `(local.set $${acc} (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $v) (local.get $${nibbles})))`
        : `(local.set $${acc} (i16x8.add (local.get $${acc}) (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $v) (local.get $${nibbles}))))`
      : `(local.set $${acc} (i32x4.relaxed_dot_i8x16_i7x16_add_s (local.get $v) (local.get $${nibbles}) (local.get $${acc})))`
  // one 16-byte step of the group: weight bytes at + 0..15 of both rows against each activation
  // row's bytes at + 0..15 (low nibbles) and 64 + at + 0..15 (high ones); `first`: the step
  // sets the i16 sums
  const step = (at: number, wq: string, wr: string, xj: (j: number) => string, first: boolean) => {
    for (const [w, lo, hi] of [
      [wq, 'la', 'ha'],
      [wr, 'lb', 'hb'],
    ]) {
      emit(8, `(local.set $p (v128.load offset=${at} (local.get ${w})))`)
      emit(8, `(local.set $${lo} (v128.and (local.get $p) (local.get $m)))`)
      emit(
        8,
        `(local.set $${hi} (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))`,
      )
    }
    if (i16 && first)
      emit(8, ';; the first 16 weight bytes set the i16 sums (no zeroing: the same integers)')
    for (const j of js) {
      emit(8, `(local.set $v (v128.load offset=${at} (local.get ${xj(j)})))`)
      emit(8, dot(`a${j}`, 'la', first), dot(`b${j}`, 'lb', first))
      emit(8, `(local.set $v (v128.load offset=${64 + at} (local.get ${xj(j)})))`)
      emit(8, dot(`a${j}`, 'ha', false), dot(`b${j}`, 'hb', false))
    }
  }
  if (looped) {
    // V8 before 13 computes every load of a loop body first and spills what does not fit in
    // registers (Node 20's code of the unrolled $q4s_tile4x2 has 188 stack accesses, Node
    // 24's 53); a step a loop iteration keeps its loads to 10
    emit(8, '(local.set $k (i32.const 0))')
    emit(8, '(local.set $wk (local.get $wq))', '(local.set $wrk (local.get $wr))')
    for (const j of js) emit(8, `(local.set $y${j} (local.get ${x(j)}))`)
    emit(8, '(loop $steps')
    step(0, '$wk', '$wrk', (j) => `$y${j}`, false)
    emit(8, '(local.set $wk (i32.add (local.get $wk) (i32.const 16)))')
    emit(8, '(local.set $wrk (i32.add (local.get $wrk) (i32.const 16)))')
    for (const j of js) emit(8, `(local.set $y${j} (i32.add (local.get $y${j}) (i32.const 16)))`)
    emit(8, '(local.set $k (i32.add (local.get $k) (i32.const 1)))')
    emit(8, '(br_if $steps (i32.lt_u (local.get $k) (i32.const 4))))')
  } else for (let at = 0; at < 64; at += 16) step(at, '$wq', '$wr', x, at === 0)

  const zeroPoints = (w: string) => [
    `(i32x4.extend_low_i16x8_u`,
    `  (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get $${w}))))`,
  ]
  // f += f32(sum − zp · Σx) · s · xd, the activation terms given as WAT expressions
  const epilogue = (f: string, sum: string, zp: string, sc: string, sx: string, dx: string) =>
    emit(
      8,
      `(local.set $${f} (f32x4.add (local.get $${f})`,
      `  (f32x4.mul`,
      `    (f32x4.mul`,
      `      (f32x4.convert_i32x4_s (i32x4.sub (local.get $${sum})`,
      `        (i32x4.mul (local.get $${zp}) ${sx})))`,
      `      (local.get $${sc}))`,
      `    ${dx})))`,
    )
  if (i16) {
    emit(8, ';; 8 exact i16 pair sums per lane; i32 lane b: block b')
    for (const acc of ['a', 'b'])
      for (const j of js)
        emit(8, `(local.set $${acc}${j} (i32x4.extadd_pairwise_i16x8_s (local.get $${acc}${j})))`)
    const [z0, z1] = zeroPoints('wq')
    const [q0, q1] = zeroPoints('wr')
    emit(
      8,
      `(local.set $zp ${z0}`,
      `  ${z1})`,
      '(local.set $sc (v128.load offset=64 (local.get $wq)))',
    )
    emit(
      8,
      `(local.set $zq ${q0}`,
      `  ${q1})`,
      '(local.set $sd (v128.load offset=64 (local.get $wr)))',
    )
    for (const j of js) {
      emit(8, `(local.set $sx (v128.load offset=144 (local.get ${x(j)})))`)
      emit(8, `(local.set $dx (v128.load offset=128 (local.get ${x(j)})))`)
      epilogue(`f${j}`, `a${j}`, 'zp', 'sc', '(local.get $sx)', '(local.get $dx)')
      epilogue(`g${j}`, `b${j}`, 'zq', 'sd', '(local.get $sx)', '(local.get $dx)')
    }
  } else {
    for (const [w, f, acc] of [
      ['wq', 'f', 'a'],
      ['wr', 'g', 'b'],
    ]) {
      const [z0, z1] = zeroPoints(w)
      emit(
        8,
        `(local.set $zp ${z0}`,
        `  ${z1})`,
        `(local.set $sc (v128.load offset=64 (local.get $${w})))`,
      )
      for (const j of js)
        epilogue(
          `${f}${j}`,
          `${acc}${j}`,
          'zp',
          'sc',
          `(v128.load offset=144 (local.get ${x(j)}))`,
          `(v128.load offset=128 (local.get ${x(j)}))`,
        )
    }
  }
  emit(8, '(local.set $wq (i32.add (local.get $wq) (i32.const 336)))')
  emit(8, '(local.set $wr (i32.add (local.get $wr) (i32.const 336)))')
  for (const j of js) emit(8, `(local.set ${x(j)} (i32.add (local.get ${x(j)}) (i32.const 160)))`)
  emit(8, '(br $groups)))')

  // two calls of $hsum and two stores per row cost 2-3% of a prompt's GEMM
  emit(
    4,
    ";; per activation row, both weight rows' sums ((0+1)+(2+3), as $hsum adds them), one 8-byte store",
  )
  if (rows > 1) emit(4, '(local.set $ldo (i32.shl (local.get $ldo) (i32.const 2)))')
  for (const j of js) {
    if (j > 0) emit(4, '(local.set $out (i32.add (local.get $out) (local.get $ldo)))')
    emit(
      4,
      `(local.set $f${j} (f32x4.add`,
      `  (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $f${j}) (local.get $g${j}))`,
      `  (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $f${j}) (local.get $g${j}))))`,
      `(v128.store64_lane 0 (local.get $out) (f32x4.add (local.get $f${j})`,
      `  (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $f${j}) (local.get $f${j}))))`,
    )
  }
  emit(2, ')')
  return out.toString()
}

/**
 * The WAT of `$rows<n>` (n = 2..4): q8 rows [v0, v1) against exactly n int16 vectors at x, two
 * rows at a time (a last odd row alone): per 8 weights of both rows, 2 widening loads, n
 * activation loads each used for both rows, 2n dots into 2n accumulators (row i, vector j), 8
 * weights a loop step (16 for 2 vectors); each row's n sums stored by `$store<n>`.
 */
export function rowsTile(n: number): string {
  const js = [...Array(n).keys()]
  const perRow = (name: string) => js.map((j) => `${name}${j}`)
  const get = (names: string[]) => names.map((v) => `(local.get $${v})`).join(' ')
  const out = new Lines()
  const emit = out.emit.bind(out)
  const store = (sums: string[], v: string) => [
    `(call $store${n} ${get(sums)}`,
    `  ${v} (local.get $zp) (local.get $scale) (local.get $sumx) (local.get $xscale)`,
    `  (local.get $out) (local.get $ldo))`,
  ]

  emit(2, `(func $rows${n}`)
  emit(
    4,
    '(param $w i32) (param $stride i32) (param $zp i32) (param $scale i32)',
    '(param $v0 i32) (param $v1 i32)',
    '(param $x i32) (param $sumx i32) (param $xscale i32)',
    '(param $out i32) (param $ldo i32) (param $stream i32)',
    locals(['v', 'row', 'k', 'wk', 'wr', 'end'], 'i32'),
    locals([...perRow('x'), 'step'], 'i32'),
    locals(perRow('a'), 'v128'),
    locals(['lo', 'hi', 'wv'], 'v128'),
    locals(perRow('c0'), 'v128'),
    locals(perRow('c1'), 'v128'),
    locals(['l0', 'l1'], 'v128'),
    '(local.set $step (i32.shl (local.get $stride) (i32.const 1)))',
    '(local.set $v (local.get $v0))',
    '(block $done',
    '  (loop $rows',
  )
  emit(8, '(br_if $done (i32.ge_u (local.get $v) (local.get $v1)))')
  emit(8, '(local.set $row (i32.add (local.get $w) (i32.mul (local.get $v) (local.get $stride))))')
  emit(8, '(if (i32.lt_u (i32.add (local.get $v) (i32.const 1)) (local.get $v1))', '  (then')
  for (const c of [...perRow('c0'), ...perRow('c1')])
    emit(12, `(local.set $${c} (v128.const i32x4 0 0 0 0))`)
  emit(
    12,
    '(if (i32.and (local.get $stream)',
    '      (i32.eqz (i32.and (i32.sub (local.get $v) (local.get $v0)) (i32.const 7))))',
    '  (then (call $touch_rows (local.get $row) (local.get $v) (local.get $v0)',
    '    (local.get $v1) (local.get $stride))))',
    '(local.set $wk (local.get $row))',
    '(local.set $end (i32.add (local.get $row) (local.get $stride)))',
    '(local.set $x0 (local.get $x))',
    '(block $pair_done',
    '  (loop $pair',
  )
  emit(16, '(br_if $pair_done (i32.ge_u (local.get $wk) (local.get $end)))')
  emit(16, '(local.set $wr (i32.add (local.get $wk) (local.get $stride)))')
  for (const j of js.slice(1))
    emit(16, `(local.set $x${j} (i32.add (local.get $x${j - 1}) (local.get $step)))`)
  // 2 vectors: 16 weights a step (1.01-1.06x); for 3, Node 20 spills such a step (0.78x)
  const halves = n === 2 ? 2 : 1
  for (let h = 0; h < halves; h++) {
    const off = (o: number) => (o ? ` offset=${o}` : '')
    emit(16, `(local.set $l0 (v128.load8x8_s${off(8 * h)} (local.get $wk)))`)
    emit(16, `(local.set $l1 (v128.load8x8_s${off(8 * h)} (local.get $wr)))`)
    for (const j of js) {
      emit(16, `(local.set $wv (v128.load${off(16 * h)} (local.get $x${j})))`)
      for (const i of [0, 1])
        emit(
          16,
          `(local.set $c${i}${j} (i32x4.add (local.get $c${i}${j}) (i32x4.dot_i16x8_s (local.get $l${i}) (local.get $wv))))`,
        )
    }
  }
  emit(
    16,
    `(local.set $wk (i32.add (local.get $wk) (i32.const ${8 * halves})))`,
    `(local.set $x0 (i32.add (local.get $x0) (i32.const ${16 * halves})))`,
    '(br $pair)))',
  )
  emit(12, ...store(perRow('c0'), '(local.get $v)'))
  emit(12, ...store(perRow('c1'), '(i32.add (local.get $v) (i32.const 1))'))
  emit(12, '(local.set $v (i32.add (local.get $v) (i32.const 2)))', '(br $rows)))')
  // the last odd row alone: 16 weights a step, widened once for the n vectors
  for (const a of perRow('a')) emit(8, `(local.set $${a} (v128.const i32x4 0 0 0 0))`)
  emit(8, '(local.set $k (i32.const 0))', '(block $k_done', '  (loop $k_loop')
  emit(
    12,
    '(br_if $k_done (i32.ge_u (local.get $k) (local.get $stride)))',
    '(local.set $wv (v128.load (i32.add (local.get $row) (local.get $k))))',
    '(local.set $lo (i16x8.extend_low_i8x16_s (local.get $wv)))',
    '(local.set $hi (i16x8.extend_high_i8x16_s (local.get $wv)))',
    '(local.set $x0 (i32.add (local.get $x) (i32.shl (local.get $k) (i32.const 1))))',
  )
  for (const j of js.slice(1))
    emit(12, `(local.set $x${j} (i32.add (local.get $x${j - 1}) (local.get $step)))`)
  for (const j of js)
    emit(
      12,
      `(local.set $a${j}`,
      `  (i32x4.add (local.get $a${j})`,
      `    (i32x4.add`,
      `      (i32x4.dot_i16x8_s (local.get $lo) (v128.load (local.get $x${j})))`,
      `      (i32x4.dot_i16x8_s (local.get $hi) (v128.load offset=16 (local.get $x${j}))))))`,
    )
  emit(12, '(local.set $k (i32.add (local.get $k) (i32.const 16)))', '(br $k_loop)))')
  emit(8, ...store(perRow('a'), '(local.get $v)'))
  emit(8, '(local.set $v (i32.add (local.get $v) (i32.const 1)))', '(br $rows)))')
  emit(2, ')')
  return out.toString()
}

/**
 * The WAT of `$store<n>` (n = 2..4): `$store` (engine.wat) for row v and the n vectors
 * j < n at once: the n horizontal sums by shuffles (exact in i32), then the same f32 operations
 * in the same order, lane j for vector j, each result stored to out[j * ldo + v]. Reads and
 * writes only the n vectors' values.
 */
export function storeTile(n: number): string {
  const js = [...Array(n).keys()]
  const out = new Lines()
  const emit = out.emit.bind(out)
  // pairs of lanes summed: [x.0 + x.1, y.0 + y.1, x.2 + x.3, y.2 + y.3]
  const pairs = (to: string, x: string, y: string) =>
    emit(
      4,
      `(local.set $${to} (i32x4.add`,
      `  (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $${x}) (local.get $${y}))`,
      `  (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $${x}) (local.get $${y}))))`,
    )
  // the n floats at p: all 4 lanes only when n is 4 (the rest are zero)
  const load = (p: string) =>
    n === 4
      ? `(v128.load (local.get $${p}))`
      : n === 3
        ? `(v128.load32_lane offset=8 2 (local.get $${p}) (v128.load64_zero (local.get $${p})))`
        : `(v128.load64_zero (local.get $${p}))`

  emit(2, `(func $store${n}`)
  emit(
    4,
    `${js.map((j) => `(param $a${j} v128)`).join(' ')} (param $v i32)`,
    '(param $zp i32) (param $scale i32) (param $sumx i32) (param $xscale i32)',
    '(param $out i32) (param $ldo i32)',
    '(local $f v128)',
  )
  emit(4, ';; [a0.0 + a0.1, a1.0 + a1.1, a0.2 + a0.3, a1.2 + a1.3], and the same of a2, a3')
  pairs('a0', 'a0', 'a1')
  if (n > 2) pairs('a2', 'a2', n === 4 ? 'a3' : 'a2')
  const hi = n > 2 ? 'a2' : 'a0' // n = 2: lanes 2 and 3 are the high halves of a0 and a1
  emit(4, ';; lane j: the sum of aj')
  emit(
    4,
    '(local.set $a0 (i32x4.add',
    `  (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a0) (local.get $${hi}))`,
    `  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a0) (local.get $${hi}))))`,
    '(local.set $f',
    '  (f32x4.mul',
    '    (f32x4.mul',
    '      (f32x4.sub',
    '        (f32x4.convert_i32x4_s (local.get $a0))',
    '        (f32x4.mul',
    '          (f32x4.splat (f32.convert_i32_s (i32.load8_s (i32.add (local.get $zp) (local.get $v)))))',
    `          ${load('sumx')}))`,
    '      (f32x4.splat (f32.load (i32.add (local.get $scale) (i32.shl (local.get $v) (i32.const 2))))))',
    `    ${load('xscale')}))`,
    '(local.set $out (i32.add (local.get $out) (i32.shl (local.get $v) (i32.const 2))))',
    '(local.set $ldo (i32.shl (local.get $ldo) (i32.const 2)))',
  )
  for (const j of js) {
    if (j > 0) emit(4, '(local.set $out (i32.add (local.get $out) (local.get $ldo)))')
    emit(4, `(v128.store32_lane ${j} (local.get $out) (local.get $f))`)
  }
  emit(2, ')')
  return out.toString()
}

/**
 * The WAT of `$q4_tile1x4`: four q4 weight rows (wq + 84·i, i < 4: a panel) · one activation row in
 * the 16-bit form, the 4 rows' sums stored at out[0..3] in one store. Per 16 weight bytes of a
 * group, the activation's 32 bytes (low-nibble half at +16·s, high at +64 + 16·s) are loaded
 * once for the 4 rows; each row's i16 sums are widened once per group. `looped`
 * (`$q4_tile1x4_loop`): the four steps as a loop, as pairTile's.
 */
export function quadTile(looped = false): string {
  const rows = [0, 1, 2, 3]
  const w = (i: number) => (i === 0 ? '$wq' : `$w${i}`)
  const out = new Lines()
  const emit = out.emit.bind(out)
  emit(2, `(func $q4_tile1x4${looped ? '_loop' : ''}`)
  emit(
    4,
    '(param $wq i32) (param $kb i32) (param $x i32) (param $out i32)',
    locals(['end', 'rs', 'w1', 'w2', 'w3'], 'i32'),
    ...(looped ? [locals(['k', 'xk', 'k0', 'k1', 'k2', 'k3'], 'i32')] : []),
    locals(['m', 'xl', 'xh', 'p', 'sx', 'dx'], 'v128'),
    locals(['a0', 'a1', 'a2', 'a3'], 'v128'),
    locals(['f0', 'f1', 'f2', 'f3'], 'v128'),
    '(local.set $rs (i32.const 84))',
  )
  for (const i of rows.slice(1))
    emit(4, `(local.set ${w(i)} (i32.add (local.get ${w(i - 1)}) (local.get $rs)))`)
  emit(
    4,
    '(local.set $end (i32.add (local.get $wq) (i32.mul (local.get $kb) (i32.const 84))))',
    '(local.set $m (i8x16.splat (i32.const 15)))',
    '(block $done',
    '  (loop $groups',
  )
  emit(8, '(br_if $done (i32.ge_u (local.get $wq) (local.get $end)))')
  // the dot products of 16 weight bytes (at `p`) with the activation's two halves
  const dots = [
    '(i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xl) (v128.and (local.get $p) (local.get $m)))',
    '(i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xh)',
    '  (v128.and (i16x8.shr_u (local.get $p) (i32.const 4)) (local.get $m)))',
  ]
  // a 16-byte step at `at`: the activation's two halves at x, the 4 rows' bytes at wi(i)
  const step = (at: number, x: string, wi: (i: number) => string, first: boolean) => {
    emit(8, `(local.set $xl (v128.load offset=${at} (local.get ${x})))`)
    emit(8, `(local.set $xh (v128.load offset=${64 + at} (local.get ${x})))`)
    for (const i of rows) {
      emit(8, `(local.set $p (v128.load offset=${at} (local.get ${wi(i)})))`)
      // the group's first 16 bytes set the i16 sums, the others add to them
      const add = first ? '' : `(local.get $a${i}) (i16x8.add`
      emit(8, `(local.set $a${i} (i16x8.add ${add}`.trimEnd(), ...dots.map((d) => `  ${d}`))
      out.close(first ? 2 : 3)
    }
  }
  if (looped) {
    // as pairTile's looped form: one step a loop iteration, the sums from zero
    for (const i of rows) emit(8, `(local.set $a${i} (v128.const i32x4 0 0 0 0))`)
    emit(8, '(local.set $k (i32.const 0))', '(local.set $xk (local.get $x))')
    for (const i of rows) emit(8, `(local.set $k${i} (local.get ${w(i)}))`)
    emit(8, '(loop $steps')
    step(0, '$xk', (i) => `$k${i}`, false)
    for (const p of ['$xk', ...rows.map((i) => `$k${i}`)])
      emit(8, `(local.set ${p} (i32.add (local.get ${p}) (i32.const 16)))`)
    emit(8, '(local.set $k (i32.add (local.get $k) (i32.const 1)))')
    emit(8, '(br_if $steps (i32.lt_u (local.get $k) (i32.const 4))))')
  } else for (let at = 0; at < 64; at += 16) step(at, '$x', w, at === 0)
  emit(8, '(local.set $sx (v128.load offset=144 (local.get $x)))')
  emit(8, '(local.set $dx (v128.load offset=128 (local.get $x)))')
  for (const i of rows)
    emit(
      8,
      `(local.set $f${i} (f32x4.add (local.get $f${i})`,
      '  (f32x4.mul',
      '    (f32x4.mul',
      '      (f32x4.convert_i32x4_s',
      `        (i32x4.sub (i32x4.extadd_pairwise_i16x8_s (local.get $a${i}))`,
      '          (i32x4.mul',
      '            (i32x4.extend_low_i16x8_u',
      `              (i16x8.extend_low_i8x16_u (v128.load32_zero offset=80 (local.get ${w(i)}))))`,
      '            (local.get $sx))))',
      `      (v128.load offset=64 (local.get ${w(i)})))`,
      '    (local.get $dx))))',
    )
  for (const i of rows) emit(8, `(local.set ${w(i)} (i32.add (local.get ${w(i)}) (i32.const 336)))`)
  emit(8, '(local.set $x (i32.add (local.get $x) (i32.const 160)))', '(br $groups)))')
  emit(4, ';; $sums4 of f0..f3 written out (lane j: (fj.0 + fj.1) + (fj.2 + fj.3)), one store')
  const pairs = (to: string, a: string, b: string) =>
    emit(
      4,
      `(local.set $${to} (f32x4.add`,
      `  (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $${a}) (local.get $${b}))`,
      `  (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $${a}) (local.get $${b}))))`,
    )
  pairs('f0', 'f0', 'f1')
  pairs('f2', 'f2', 'f3')
  emit(
    4,
    '(v128.store (local.get $out) (f32x4.add',
    '  (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $f0) (local.get $f2))',
    '  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $f0) (local.get $f2))))',
  )
  emit(2, ')')
  return out.toString()
}
