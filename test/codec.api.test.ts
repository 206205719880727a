// The TypeScript API and the stream layout FORMAT.md promises, read back byte by byte.
import assert from 'node:assert/strict';

import {
  CodecError,
  compress,
  compressAsync,
  compressLadder,
  decompress,
  decompressAsync,
  inspect,
  ladderBounds,
  quantizedEntropyBits,
} from '../src/codec/index.js';
import { native } from '../src/codec/native.js';
import { gaussian } from './codec/data.js';

/** The largest f32 not above v, from the bits (what a header's eb must be). */
function largestF32NotAbove(v: number): number {
  const f = new Float32Array([v]);
  if (f[0] > v) new Uint32Array(f.buffer)[0] -= 1; // positive: one step down in the bits
  return f[0];
}

const isCodecError = (code: string) => (e: unknown) => e instanceof CodecError && e.code === code;

describe('stream layout (FORMAT.md)', function () {
  it('computes CRC-32C as the standard says ("123456789" → 0xE3069283)', function () {
    assert.equal(native.crc32c(Buffer.from('123456789')), 0xe3069283);
  });

  it('gets the same CRC-32C from segments computed on two threads and combined', function () {
    const data = Buffer.from(gaussian((3 << 20) + 5, 1, 2).buffer);
    const whole = native.crc32c(data, 1);
    assert.equal(native.crc32c(data, 2), whole);
    data[data.length - 1] ^= 1;
    assert.notEqual(native.crc32c(data, 2), whole);
  });

  it('writes the header fields at the offsets FORMAT.md gives', function () {
    const x = gaussian(1000, 0.02);
    x[10] = NaN;
    const stream = compressLadder(x, { bounds: ladderBounds(1e-3, 2) });
    const v = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
    assert.equal(stream.subarray(0, 4).toString('latin1'), 'EBSC');
    assert.equal(v.getUint16(4, true), 1);
    assert.equal(v.getUint8(6), 0); // f32
    assert.equal(v.getUint8(7), 0); // fixed mode
    assert.equal(Number(v.getBigUint64(8, true)), 1000);
    assert.equal(v.getFloat64(16, true), largestF32NotAbove(1e-3));
    assert.equal(v.getUint32(24, true), 32);
    assert.equal(v.getUint8(28), 2);
    assert.equal(v.getFloat64(32, true), 1e-3);
    assert.equal(Number(v.getBigUint64(40, true)), 1); // the NaN escaped
    const payload = Number(v.getBigUint64(48, true));
    assert.equal(stream.byteLength, 64 + 24 * 2 + payload);
    // Rung table: rung 0 drops one plane, rung 1 none; back to back; CRCs match.
    assert.equal(v.getUint8(64), 1);
    assert.equal(v.getUint8(88), 0);
    const len0 = Number(v.getBigUint64(64 + 16, true));
    assert.equal(Number(v.getBigUint64(88 + 8, true)), len0);
    assert.equal(v.getUint32(64 + 4, true), native.crc32c(stream.subarray(112, 112 + len0)));
    // Rung 0 starts with one rate byte per 32 values, padded to 4, then the escape (index 10).
    const rates = Math.ceil(1000 / 32);
    assert.equal(v.getUint32(112 + Math.ceil(rates / 4) * 4, true), 10);
  });

  it('costs one byte per 32 values for an all-zero tensor', function () {
    const info = inspect(compress(new Float32Array(32 * 1000), { bound: 1e-3 }));
    assert.equal(info.payloadBytes, 1000);
  });
});

describe('codec API', function () {
  it('reaches the ratio of a fixed-length coder on N(0, 0.02) at 1e-3, near the entropy limit', function () {
    const x = gaussian(1 << 18, 0.02, 5);
    const info = inspect(compress(x, { bound: 1e-3 }));
    const limit = 32 / quantizedEntropyBits(x, 'f32', 1e-3);
    assert.ok(info.ratio >= 5.0, `ratio ${info.ratio}`);
    assert.ok(info.ratio < limit, `ratio ${info.ratio} beats the entropy limit ${limit}?`);
  });

  it('gives the same bytes sync and async, on one thread and two', async function () {
    const x = gaussian(300_000, 0.02, 3);
    const one = compress(x, { bound: 1e-3 });
    assert.deepEqual(compress(x, { bound: 1e-3, threads: 2 }), one);
    assert.deepEqual(await compressAsync(x, { bound: 1e-3 }), one);
    assert.deepEqual(await decompressAsync(one), decompress(one, { threads: 2 }));
  });

  it('keeps the event loop turning while an async call works on a large tensor', async function () {
    const x = gaussian(8 << 20, 0.02, 9);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const stream = await compressAsync(x, { bound: 1e-4 });
    const ticksDuringCompress = ticks;
    await decompressAsync(stream);
    clearInterval(timer);
    assert.ok(ticksDuringCompress > 0, 'no timer fired while compressing');
    assert.ok(ticks > ticksDuringCompress, 'no timer fired while decompressing');
  });

  it('decodes into a caller-supplied buffer, and refuses one too small or of the wrong type', function () {
    const x = gaussian(1000, 0.02);
    const stream = compress(x, { bound: 1e-3 });
    const out = new Float32Array(1000);
    assert.equal(decompress(stream, { out }), out);
    assert.ok(Math.abs(out[7] - x[7]) <= 1e-3);
    assert.throws(() => decompress(stream, { out: new Float32Array(999) }), isCodecError('BAD_OUTPUT'));
    assert.throws(() => decompress(stream, { out: new Uint16Array(1000) }), isCodecError('BAD_OUTPUT'));
    assert.throws(() => decompress(stream, { out: new Float32Array(1000), outDtype: 'bf16' }), isCodecError('BAD_OUTPUT'));
  });

  it('names what is wrong with its arguments', function () {
    const x = gaussian(64, 0.02);
    assert.throws(() => compress(new Uint16Array(4), { bound: 1e-3 }), isCodecError('BAD_DTYPE'));
    assert.throws(() => compress(x, { bound: 1e-3, dtype: 'bf16' }), isCodecError('BAD_DTYPE'));
    assert.throws(() => compress(x, { bound: 1e-3, boundMode: 'percent' as never }), isCodecError('BAD_BOUND_MODE'));
    assert.throws(() => compress(new Uint8Array(7), { bound: 1e-3 }), isCodecError('BAD_INPUT'));
    assert.throws(() => decompress(compress(x, { bound: 1e-3 }), { rung: 1 }), isCodecError('BAD_RUNGS'));
    assert.throws(() => decompress(compress(x, { bound: 1e-3 }), { outDtype: 'f64' as never }), isCodecError('BAD_DTYPE'));
  });

  it('reads raw little-endian bytes of any dtype', function () {
    const x = gaussian(100, 0.02);
    const bytes = new Uint8Array(x.buffer);
    assert.deepEqual(compress(bytes, { bound: 1e-3, dtype: 'f32' }), compress(x, { bound: 1e-3 }));
  });
});
