// The decoder on damaged and forged streams, through the TypeScript API: every one is refused with a
// CodecError whose code FORMAT.md defines (and, where the damage is specific, the code that names
// it), never anything else, and the process stays up. The long run of the same idea, under ASan and
// UBSan, is `make fuzz` (test/fuzz/fuzz_decode.cc).
import assert from 'node:assert/strict';

import {
  CodecError,
  compress,
  compressLadder,
  decompress,
  decompressAsync,
  decompressRungs,
  inspect,
  ladderBounds,
  type DType,
} from '../src/codec/index.js';
import { f32ToBf16Bits, f32ToF16Bits } from '../src/codec/halfs.js';
import { gaussian } from './codec/data.js';
import { damage, dv, entropyLayout, FORMAT_CODES, forged, forgery, layout, rng, split } from './fuzz/mutate.js';

/** Runs fn, which must throw a CodecError with a FORMAT.md code (one of `codes`, when given). */
function refusal(fn: () => unknown, what: string, codes?: readonly string[]): CodecError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CodecError, `${what}: threw ${String(e)}, not a CodecError`);
    assert.ok(FORMAT_CODES.has(e.code), `${what}: code ${e.code} is not one of FORMAT.md's (${e.message})`);
    if (codes && codes.length) assert.ok(codes.includes(e.code), `${what}: ${e.code} (${e.message}); expected ${codes.join(' or ')}`);
    return e;
  }
  assert.fail(`${what}: decoded without error`);
}

/** Runs fn, which may succeed or throw a CodecError with a FORMAT.md code. */
function decodesOrRefuses(fn: () => unknown, what: string): CodecError | null {
  try {
    fn();
    return null;
  } catch (e) {
    assert.ok(e instanceof CodecError, `${what}: threw ${String(e)}, not a CodecError`);
    assert.ok(FORMAT_CODES.has(e.code), `${what}: code ${e.code} is not one of FORMAT.md's (${e.message})`);
    return e;
  }
}

/** Test data with escapes: NaN, ±Inf, a value beyond the quantizer's range, one in the last block. */
function values(n: number, seed: number): Float32Array {
  const x = gaussian(n, 0.02, seed);
  const specials = [NaN, Infinity, -Infinity, 1e30, -8000];
  for (let i = 0; i < n; i += 17) x[i] = specials[(i / 17) % specials.length];
  if (n > 0) x[n - 1] = NaN;
  return x;
}

function asDtype(x: Float32Array, dtype: DType): Float32Array | Uint16Array {
  if (dtype === 'f32') return x;
  return Uint16Array.from(x, dtype === 'f16' ? f32ToF16Bits : f32ToBf16Bits);
}

// Small seeds, so thousands of cases take well under a second: one rung and four, f32 / f16 / bf16.
const SEEDS: { name: string; stream: Buffer }[] = [];
for (const dtype of ['f32', 'f16', 'bf16'] as DType[]) {
  for (const n of [0, 1, 33, 200]) {
    const x = asDtype(values(n, n + 1), dtype);
    SEEDS.push({ name: `${dtype} n=${n} 1 rung`, stream: compress(x, { bound: 1e-3, dtype }) });
    SEEDS.push({ name: `${dtype} n=${n} 4 rungs`, stream: compressLadder(x, { bounds: ladderBounds(1e-3, 4), dtype }) });
  }
}
const ladder = SEEDS.find((s) => s.name === 'f32 n=200 4 rungs')!.stream;
const single = SEEDS.find((s) => s.name === 'f32 n=200 1 rung')!.stream;

describe('decompress on damaged streams', function () {
  this.timeout(20_000);

  describe('names the problem', function () {
    it('answers TRUNCATED for a stream cut inside its header', function () {
      for (const at of [0, 1, 4, 8, 32, 56, 63]) refusal(() => decompress(single.subarray(0, at)), `cut at ${at}`, ['TRUNCATED']);
    });

    it('answers TRUNCATED for a stream cut inside its rung table or payload', function () {
      const l = layout(ladder);
      for (const at of [64, l.headBytes - 1, l.headBytes, l.wordsAt, ladder.length - 1]) {
        refusal(() => decompress(ladder.subarray(0, at)), `cut at ${at}`, ['TRUNCATED']);
      }
    });

    it('answers BAD_MAGIC for a stream that does not start with EBSC', function () {
      const e = refusal(() => decompress(forged(single, (b) => b.write('EBSD', 0, 'latin1'))), 'magic EBSD', ['BAD_MAGIC']);
      assert.match(e.message, /EBSC/);
    });

    it('answers BAD_VERSION for format version 3', function () {
      const e = refusal(() => decompress(forged(single, (_, v) => v.setUint16(4, 3, true))), 'version 3', ['BAD_VERSION']);
      assert.match(e.message, /version 3/);
    });

    it('reads a fixed-length stream stamped version 2 as version 1 (mode 0 means the same layout)', function () {
      assert.deepEqual(decompress(forged(single, (_, v) => v.setUint16(4, 2, true))), decompress(single));
    });

    it('answers CHECKSUM naming rung 0 for a flipped byte of its bit-planes', function () {
      const l = layout(single);
      assert.ok(l.rungAt[0] + l.rungBytes[0] > l.wordsAt, 'the seed has block words');
      const b = Buffer.from(single);
      b[l.wordsAt + 5] ^= 0x10;
      const e = refusal(() => decompress(b), 'flipped plane byte', ['CHECKSUM']);
      assert.match(e.message, /rung 0\b/);
    });

    it('answers CHECKSUM naming the rung for a flipped byte of a later rung, whole or split', function () {
      const l = layout(ladder);
      const k = l.rungBytes.findIndex((n, j) => j > 0 && n > 0);
      const b = Buffer.from(ladder);
      b[l.rungAt[k] + 1] ^= 0x01;
      assert.match(refusal(() => decompress(b), `rung ${k} flipped`, ['CHECKSUM']).message, new RegExp(`rung ${k}\\b`));
      const { head, rungs } = split(b);
      assert.match(refusal(() => decompressRungs(head, rungs), `rung ${k} flipped, split`, ['CHECKSUM']).message, new RegExp(`rung ${k}\\b`));
      // Without the damaged rung, what is given is intact.
      assert.deepEqual(decompressRungs(head, rungs.slice(0, k)), decompress(ladder, { rung: k - 1 }));
    });

    it('answers CHECKSUM naming the header for a flipped rung-table byte', function () {
      const b = Buffer.from(ladder);
      b[64 + 24 + 10] ^= 0x40; // rung 1's offset
      assert.match(refusal(() => decompress(b), 'table flipped', ['CHECKSUM']).message, /header/);
    });

    it('answers BAD_RATE for a rate byte of 200 when checksums are not verified (and when they are)', function () {
      const b = Buffer.from(single);
      b[layout(single).ratesAt + 2] = 200;
      assert.match(refusal(() => decompress(b, { verify: false }), 'rate 200, verify false', ['BAD_RATE']).message, /block 2\b.*200/);
      refusal(() => decompress(b), 'rate 200, verify true', ['BAD_RATE']);
    });

    it('answers BAD_COUNT for a count forged to 2^40, header checksum recomputed', function () {
      const b = forged(single, (_, v) => v.setBigUint64(8, 2n ** 40n, true));
      refusal(() => decompress(b), 'count 2^40', ['BAD_COUNT']);
      refusal(() => inspect(b), 'count 2^40, inspect', ['BAD_COUNT']);
    });

    it('answers BAD_LENGTH for trailing garbage', function () {
      for (const extra of [1, 3, 64]) {
        refusal(() => decompress(Buffer.concat([single, Buffer.alloc(extra, 0xab)])), `${extra} bytes of garbage`, ['BAD_LENGTH']);
      }
    });

    it('answers BAD_ESCAPES for an escape index past the end, checksums recomputed or not checked', function () {
      const l = layout(single);
      assert.ok(l.escapes > 1);
      const past = forged(single, (_, v) => v.setUint32(l.escapesAt + 8 * (l.escapes - 1), l.count, true));
      assert.match(refusal(() => decompress(past), 'escape index = count', ['BAD_ESCAPES']).message, /past the end/);
      const order = forged(single, (_, v) => v.setUint32(l.escapesAt + 8, v.getUint32(l.escapesAt, true), true), false);
      assert.match(refusal(() => decompress(order, { verify: false }), 'escape index repeated', ['BAD_ESCAPES']).message, /out of order/);
    });

    it('answers BAD_ESCAPES for an escape count above the element count', function () {
      refusal(() => decompress(forged(single, (_, v) => v.setBigUint64(40, 201n, true))), 'escape count 201', ['BAD_ESCAPES']);
    });

    it('answers BAD_PADDING for a nonzero byte after the rate bytes', function () {
      const l = layout(single); // 200 values: 7 rate bytes and one of padding
      assert.notEqual(l.blocks % 4, 0);
      refusal(() => decompress(forged(single, (b) => void (b[l.ratesAt + l.blocks] = 1))), 'padding 1', ['BAD_PADDING']);
    });

    it('answers BAD_RUNG for a rung whose bytes are not what its rate bytes call for', function () {
      refusal(() => decompress(forged(single, (b) => void (b[layout(single).ratesAt] ^= 1))), 'rate byte changed', ['BAD_RUNG']);
    });

    it('names every forged header and table field with its own code', function () {
      const cases: [string, (b: Buffer, v: DataView) => void, string][] = [
        ['dtype 3', (b) => void (b[6] = 3), 'BAD_DTYPE'],
        ['mode 1', (b) => void (b[7] = 1), 'BAD_MODE'],
        ['eb NaN', (_, v) => v.setFloat64(16, NaN, true), 'BAD_BOUND'],
        ['eb 0', (_, v) => v.setFloat64(16, 0, true), 'BAD_BOUND'],
        ['eb an f32 subnormal', (_, v) => v.setFloat64(16, 2 ** -140, true), 'BAD_BOUND'],
        ['eb not an f32', (_, v) => v.setFloat64(16, 0.1, true), 'BAD_BOUND'],
        ['eb whose loosest rung overflows f32', (_, v) => v.setFloat64(16, 2 ** 126, true), 'BAD_BOUND'],
        ['block size 64', (_, v) => v.setUint32(24, 64, true), 'BAD_BLOCK'],
        ['rung count 0', (b) => void (b[28] = 0), 'BAD_RUNGS'],
        ['rung count 17', (b) => void (b[28] = 17), 'BAD_RUNGS'],
        ['bound mode 3', (b) => void (b[29] = 3), 'BAD_BOUND_MODE'],
        ['reserved u16', (b) => void (b[30] = 1), 'BAD_RESERVED'],
        ['reserved u32', (b) => void (b[63] = 1), 'BAD_RESERVED'],
        ['rung reserved', (b) => void (b[64 + 2] = 1), 'BAD_RESERVED'],
        ['rung 1 offset', (_, v) => v.setBigUint64(64 + 24 + 8, v.getBigUint64(64 + 24 + 8, true) + 4n, true), 'BAD_RUNG'],
        ['rung 0 drops 22 planes', (b) => void (b[64] = 22), 'BAD_RUNG'],
        ['planes not decreasing', (b) => void (b[64 + 24] = b[64]), 'BAD_RUNG'],
        ['last rung drops planes', (b) => void (b[64 + 3 * 24] = 1), 'BAD_RUNG'],
        ['payload length + 4', (_, v) => v.setBigUint64(48, v.getBigUint64(48, true) + 4n, true), 'BAD_LENGTH'],
      ];
      for (const [what, edit, code] of cases) {
        refusal(() => decompress(forged(ladder, edit)), `${what}, CRCs recomputed`, [code]);
        refusal(() => decompress(forged(ladder, edit, false), { verify: false }), `${what}, verify false`, [code]);
      }
    });
  });

  describe('refuses damage of every kind, with a FORMAT.md code', function () {
    it('answers TRUNCATED for every cut of a small stream, whole or its head split off', function () {
      let n = 0;
      for (const s of [single, ladder, SEEDS[0].stream]) {
        for (let at = 0; at < s.length; at++) {
          for (const verify of [true, false]) refusal(() => decompress(s.subarray(0, at), { verify }), `cut at ${at}`, ['TRUNCATED']);
          n++;
        }
        const { head, rungs } = split(s);
        for (let at = 0; at < head.length; at++) refusal(() => decompressRungs(head.subarray(0, at), rungs), `head cut at ${at}`, ['TRUNCATED']);
      }
      assert.ok(n > 1000, `${n} cuts`);
    });

    it('refuses 2000 blindly damaged streams when verifying, and never crashes when not', function () {
      const r = rng(20241);
      let refusedUnverified = 0;
      for (let i = 0; i < 2000; i++) {
        const seed = SEEDS[r.below(SEEDS.length)];
        const d = damage(seed.stream, r);
        const what = `case ${i} (${seed.name}): ${d.what}`;
        if (d.bytes.equals(seed.stream)) continue; // an overwrite that wrote what was there
        refusal(() => decompress(d.bytes), what);
        if (decodesOrRefuses(() => decompress(d.bytes, { verify: false, outDtype: i % 2 ? 'f32' : 'bf16' }), what)) refusedUnverified++;
        decodesOrRefuses(() => inspect(d.bytes, { verify: false }), `${what} (inspect)`);
      }
      assert.ok(refusedUnverified > 500, `${refusedUnverified} refused without checksums`);
    });

    it('names 1500 forged fields, checksums recomputed so only the structure checks can tell', function () {
      const r = rng(777);
      for (let i = 0; i < 1500; i++) {
        const seed = SEEDS[r.below(SEEDS.length)];
        const f = forgery(seed.stream, r);
        const b = forged(seed.stream, f.edit);
        const what = `case ${i} (${seed.name}): ${f.what}`;
        if (b.equals(seed.stream)) continue;
        for (const verify of [true, false]) {
          if (f.mayDecode) decodesOrRefuses(() => decompress(b, { verify }), what);
          else refusal(() => decompress(b, { verify }), `${what}, verify ${verify}`, f.codes);
        }
      }
    });

    it('refuses rung buffers of the wrong length, naming the rung, and rung counts it cannot use', function () {
      const r = rng(99);
      const ladders = SEEDS.filter((s) => s.name.endsWith('4 rungs'));
      for (let i = 0; i < 500; i++) {
        const seed = ladders[r.below(ladders.length)];
        const { head, rungs } = split(seed.stream);
        const j = r.below(rungs.length);
        const given = rungs.slice(0, r.int(j + 1, rungs.length));
        const shorter = given[j].length > 0 && r.coin();
        const d = r.int(1, 9);
        given[j] = shorter ? given[j].subarray(0, Math.max(0, given[j].length - d)) : Buffer.concat([given[j], Buffer.alloc(d)]);
        const e = refusal(() => decompressRungs(head, given), `case ${i} (${seed.name}): rung ${j} ${shorter ? 'short' : 'long'}`, [
          shorter ? 'TRUNCATED' : 'BAD_LENGTH',
        ]);
        assert.match(e.message, new RegExp(`rung ${j}\\b`));
      }
      const { head, rungs } = split(ladder);
      refusal(() => decompressRungs(head, []), 'no rungs', ['BAD_RUNGS']);
      refusal(() => decompressRungs(head, [...rungs, rungs[3]]), 'five rungs of four', ['BAD_RUNGS']);
      refusal(() => decompressRungs(head, [rungs[1], rungs[0]]), 'rungs swapped'); // lengths differ: named
      refusal(() => decompressRungs(head, rungs, { rung: 4 }), 'rung 4 of 4', ['BAD_RUNGS']);
      for (let k = 1; k <= 4; k++) assert.deepEqual(decompressRungs(head, rungs.slice(0, k)), decompress(ladder, { rung: k - 1 }));
    });

    it('rejects damaged streams decoded on worker threads with a CodecError, and keeps serving', async function () {
      const r = rng(4242);
      for (let i = 0; i < 100; i++) {
        const seed = SEEDS[r.below(SEEDS.length)];
        const d = damage(seed.stream, r);
        if (d.bytes.equals(seed.stream)) continue;
        await assert.rejects(decompressAsync(d.bytes), (e: unknown) => {
          assert.ok(e instanceof CodecError && FORMAT_CODES.has(e.code), `case ${i}: ${d.what}: ${String(e)}`);
          return true;
        });
      }
      const x = values(1000, 5);
      const out = (await decompressAsync(compress(x, { bound: 1e-3 }))) as Float32Array;
      assert.equal(out.length, 1000);
      assert.ok(Number.isNaN(out[999]) && out[17] === Infinity);
    });
  });

  describe('entropy-coded (version 2) streams', function () {
    const ESEEDS: { name: string; stream: Buffer }[] = [];
    for (const dtype of ['f32', 'bf16'] as DType[]) {
      for (const n of [0, 1, 33, 200, 3000]) {
        const x = asDtype(values(n, n + 3), dtype);
        ESEEDS.push({ name: `${dtype} n=${n} 1 rung`, stream: compress(x, { bound: 1e-3, dtype, coder: 'entropy' }) });
        ESEEDS.push({ name: `${dtype} n=${n} 4 rungs`, stream: compressLadder(x, { bounds: ladderBounds(1e-3, 4), dtype, coder: 'entropy' }) });
      }
    }
    // Two segments (70,001 values), and values wide enough that rung 0 keeps raw planes.
    ESEEDS.push({ name: 'f32 n=70001 wide 1 rung', stream: compress(values(70_001, 9), { bound: 2e-5, coder: 'entropy' }) });
    const one = ESEEDS.find((s) => s.name === 'f32 n=3000 1 rung')!.stream;
    const two = ESEEDS[ESEEDS.length - 1].stream;
    const lad = ESEEDS.find((s) => s.name === 'f32 n=3000 4 rungs')!.stream;

    it('has seeds of every part: escapes, raw planes, refinement rungs, two segments', function () {
      assert.ok(entropyLayout(one).escapes > 0 && entropyLayout(one).segWords[0] > 0);
      assert.equal(entropyLayout(two).segments, 2);
      assert.ok(two[entropyLayout(two).descAt] > 0, 'raw planes in rung 0');
      assert.ok(entropyLayout(lad).rungBytes[3] > 0);
      for (const s of ESEEDS) assert.equal(inspect(s.stream).mode, 'entropy', s.name);
    });

    it('answers TRUNCATED for every cut, whole or with the head split off', function () {
      for (const s of [one, lad, ESEEDS[2].stream]) {
        for (let at = 0; at < s.length; at += s.length > 4000 ? 7 : 1) {
          for (const verify of [true, false]) refusal(() => decompress(s.subarray(0, at), { verify }), `cut at ${at}`, ['TRUNCATED']);
        }
        const { head, rungs } = split(s);
        for (let at = 0; at < head.length; at++) refusal(() => decompressRungs(head.subarray(0, at), rungs), `head cut at ${at}`, ['TRUNCATED']);
      }
    });

    it('names every forged descriptor, table and lane field, checksums recomputed or not checked', function () {
      const l = entropyLayout(one);
      const ll = entropyLayout(lad);
      const cases: [string, Buffer, (b: Buffer, v: DataView) => void, string[]][] = [
        ['version 1 with mode 1', one, (_, v) => v.setUint16(4, 1, true), ['BAD_MODE']],
        ['mode 2', one, (b) => void (b[7] = 2), ['BAD_MODE']],
        ['probability scale 11 bits', one, (b) => void (b[l.descAt + 1] = 11), ['BAD_TABLE']],
        ['raw planes past plane 22', one, (b) => void (b[l.descAt] = 23), ['BAD_TABLE']],
        ['257 symbols', one, (_, v) => v.setUint16(l.descAt + 2, 257, true), ['BAD_TABLE']],
        ['one symbol fewer', one, (_, v) => v.setUint16(l.descAt + 2, l.symbols - 1, true), ['BAD_TABLE', 'BAD_RUNG']],
        ['segment count + 1', one, (_, v) => v.setUint32(l.descAt + 4, l.segments + 1, true), ['BAD_TABLE']],
        ['frequencies summing to 4097', one, (_, v) => v.setUint16(l.freqAt, v.getUint16(l.freqAt, true) + 1, true), ['BAD_TABLE']],
        ['frequencies summing to 4095', one, (_, v) => v.setUint16(l.freqAt + 2 * (l.symbols - 1), v.getUint16(l.freqAt + 2 * (l.symbols - 1), true) - 1, true), ['BAD_TABLE']],
        ['more words than values', one, (_, v) => v.setUint32(l.segTableAt, 3001, true), ['BAD_LANES']],
        ['segment past the rung', one, (_, v) => v.setUint32(l.segTableAt, l.segWords[0] + 2, true), ['BAD_RUNG']],
        ['a lane state below 2^16', one, (_, v) => v.setUint32(l.segAt[0] + 4 * 5, 0xffff, true), ['BAD_LANES']],
        ['escape past the end', one, (_, v) => v.setUint32(l.entropyEscapesAt + 8 * (l.escapes - 1), 3000, true), ['BAD_ESCAPES']],
        ['refinement rung a word short', lad, (_, v) => v.setBigUint64(64 + 3 * 24 + 16, BigInt(ll.rungBytes[3] - 4), true), ['BAD_LENGTH', 'BAD_RUNG']],
      ];
      for (const [what, seed, edit, codes] of cases) {
        refusal(() => decompress(forged(seed, edit)), `${what}, CRCs recomputed`, codes);
        refusal(() => decompress(forged(seed, edit, false), { verify: false }), `${what}, verify false`, codes);
      }
    });

    it('answers BAD_LANES when lane words or the frequency table are changed and the checksums recomputed', function () {
      const l = entropyLayout(one);
      const r = rng(31);
      for (let i = 0; i < 200; i++) {
        const at = l.segAt[0] + 128 + 2 * r.below(l.segWords[0]);
        const flip = 1 << r.below(16);
        const b = forged(one, (_, v) => v.setUint16(at, v.getUint16(at, true) ^ flip, true));
        refusal(() => decompress(b), `word at ${at} ^ ${flip}`, ['BAD_LANES']);
      }
      // Two frequencies swapped: still a valid table, but not the one the lanes were coded with.
      const swapped = forged(one, (_, v) => {
        const a = v.getUint16(l.freqAt + 2 * 10, true);
        v.setUint16(l.freqAt + 2 * 10, v.getUint16(l.freqAt + 2 * 40, true), true);
        v.setUint16(l.freqAt + 2 * 40, a, true);
      });
      refusal(() => decompress(swapped), 'frequencies 10 and 40 swapped', ['BAD_LANES']);
      // A segment that says fewer words than its lanes read: they stop at its end, never past it.
      const even = l.segWords[0] - (l.segWords[0] % 2);
      const short = forged(one, (_, v) => v.setUint32(l.segTableAt, even - 2, true));
      refusal(() => decompress(short), 'two words fewer', ['BAD_LANES', 'BAD_RUNG', 'BAD_PADDING']);
    });

    it('refuses 2000 blindly damaged streams when verifying, and never crashes when not', function () {
      const r = rng(16016);
      let refusedUnverified = 0;
      for (let i = 0; i < 2000; i++) {
        const seed = ESEEDS[r.below(ESEEDS.length)];
        const d = damage(seed.stream, r);
        const what = `case ${i} (${seed.name}): ${d.what}`;
        if (d.bytes.equals(seed.stream)) continue;
        refusal(() => decompress(d.bytes), what);
        if (decodesOrRefuses(() => decompress(d.bytes, { verify: false, outDtype: i % 2 ? 'f32' : 'bf16', rung: -1 }), what)) refusedUnverified++;
        decodesOrRefuses(() => inspect(d.bytes, { verify: false }), `${what} (inspect)`);
      }
      assert.ok(refusedUnverified > 1000, `${refusedUnverified} refused without checksums`);
    });

    it('refuses damaged v2 streams decoded on worker threads with a CodecError', async function () {
      const r = rng(1616);
      for (let i = 0; i < 100; i++) {
        const seed = ESEEDS[r.below(ESEEDS.length)];
        const d = damage(seed.stream, r);
        if (d.bytes.equals(seed.stream)) continue;
        await assert.rejects(decompressAsync(d.bytes), (e: unknown) => {
          assert.ok(e instanceof CodecError && FORMAT_CODES.has(e.code), `case ${i}: ${d.what}: ${String(e)}`);
          return true;
        });
      }
    });
  });

  it('reads its codes from FORMAT.md', function () {
    for (const c of ['TRUNCATED', 'BAD_MAGIC', 'BAD_VERSION', 'CHECKSUM', 'BAD_RATE', 'BAD_COUNT', 'BAD_LENGTH', 'BAD_ESCAPES']) {
      assert.ok(FORMAT_CODES.has(c), c);
    }
    assert.equal(dv(single).getUint32(0, true), 0x43534245); // 'EBSC'
  });
});
