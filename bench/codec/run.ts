/**
 * `make bench-codec`: the codec against memcpy, its own entropy limit and ZFP, on 64 MiB of
 * N(0, 0.02) f32 and the same values rounded to bf16. Prints a table, writes
 * bench/results/codec.json, and reports the "done when" bars as PASS/MISS lines (a report, not an
 * assertion). Progress goes to stderr. What it measures and its caveats: README.md beside this file.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  compress,
  compressLadder,
  decompress,
  inspect,
  ladderBounds,
  quantizedEntropyBits,
  type DType,
} from '../../src/codec/index.js';
import { native } from '../../src/codec/native.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BENCH_DIR = path.join(ROOT, 'build', 'bench');
const RESULTS = path.join(ROOT, 'bench', 'results', 'codec.json');
const ZFP_PEER = path.join(BENCH_DIR, 'zfp_peer');

const N = 16 * 1024 * 1024; // 16 Mi values: 64 MiB of f32
const SIGMA = 0.02;
const SEED = 0x5eed2024;
const BOUNDS = [1e-2, 1e-3, 1e-4];
const LADDER_RUNGS = 4;
const REPS = 5; // ebserve: best of 5 after a warm-up
const ZFP_REPS = 3; // zfp is ~30x slower: best of 3 after a warm-up
const MEMCPY_REPS = 10;

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}\n`);

// ---------------------------------------------------------------- data

/** N(0, sigma) f32 values from xorshift128 (Marsaglia) + Box-Muller: the same bytes on every run. */
function gaussian(n: number, sigma: number, seed: number): Float32Array {
  let x = seed | 0 || 123456789;
  let y = 362436069;
  let z = 521288629;
  let w = 88675123;
  const out = new Float32Array(n);
  const TWO_PI = 2 * Math.PI;
  for (let i = 0; i < n; i += 2) {
    let t = x ^ (x << 11);
    x = y; y = z; z = w;
    w = w ^ (w >>> 19) ^ (t ^ (t >>> 8));
    const u1 = ((w >>> 0) + 1) / 4294967296; // (0, 1]: log never sees 0
    t = x ^ (x << 11);
    x = y; y = z; z = w;
    w = w ^ (w >>> 19) ^ (t ^ (t >>> 8));
    const u2 = (w >>> 0) / 4294967296;
    const r = sigma * Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(TWO_PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(TWO_PI * u2);
  }
  return out;
}

/** f32 → bf16 bits, round to nearest even (the data has no NaN). */
function toBf16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) {
    const b = u[i];
    out[i] = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/** bf16 bits → f32 values (exact). */
function widenBf16(bits: Uint16Array, out: Float32Array = new Float32Array(bits.length)): Float32Array {
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return out;
}

/**
 * max |ref − got| in f64 (NaN if any difference is NaN), and how many values break the bound:
 * |x − x̂| ≤ bound for f32 output; for bf16 output FORMAT.md allows one more rounding,
 * |x − out| ≤ bound + ulp(out)/2, and ulp(out)/2 ≤ 2^−8·|out|.
 */
function errorStats(ref: Float32Array, got: Float32Array, bound: number, bf16Out: boolean): { max: number; violations: number } {
  let m = 0;
  let violations = 0;
  const rel = bf16Out ? 2 ** -8 : 0;
  for (let i = 0; i < ref.length; i++) {
    const e = Math.abs(ref[i] - got[i]);
    if (e > m) m = e;
    else if (e !== e) m = NaN;
    if (!(e <= bound + rel * Math.abs(got[i]))) violations++;
  }
  return { max: m, violations };
}

// ---------------------------------------------------------------- timing

/** Best wall time in seconds of `reps` calls after one warm-up call. */
function best(reps: number, fn: () => void): number {
  fn();
  let b = Infinity;
  for (let r = 0; r < reps; r++) {
    const s = process.hrtime.bigint();
    fn();
    const t = Number(process.hrtime.bigint() - s) / 1e9;
    if (t < b) b = t;
  }
  return b;
}

const gbps = (bytes: number, seconds: number) => bytes / seconds / 1e9;

function memcpyGbps(src: Float32Array, dst: Float32Array): number {
  return gbps(src.byteLength, best(MEMCPY_REPS, () => dst.set(src)));
}

// ---------------------------------------------------------------- rows

interface LadderRung {
  bound: number;
  bytes_ratio_vs_direct: number;
  cumulative_bytes: number;
  direct_bytes: number;
  max_abs_error: number;
  within_bound: boolean;
}

interface Row {
  dtype: DType;
  bound: number;
  codec: 'ebserve' | 'ebserve-ladder4' | 'ebserve-entropy' | 'ebserve-entropy-ladder4' | 'zfp';
  ratio: number;
  compress_gbps_1t: number;
  decompress_gbps_1t: number;
  compress_gbps_2t: number;
  decompress_gbps_2t: number | null;
  max_abs_error: number;
  /** Every value decoded within the bound (bf16 output: bound + ulp(out)/2); ladders: at every rung. */
  within_bound: boolean;
  memcpy_gbps: number;
  entropy_ratio: number;
  compressed_bytes: number;
  ladder_overhead?: LadderRung[];
  note?: string;
}

interface Source {
  dtype: DType;
  /** What the codec is given: f32 values or bf16 bits. */
  values: Float32Array | Uint16Array;
  /** The source values as f32, for the error. */
  ref: Float32Array;
  bytes: number;
  bitsPerValue: number;
  /** The raw f32 file ZFP reads. */
  zfpFile: string;
}

/** Decodes `stream` (rungs 0..rung, or all) into `out`; its error against the source, and the bound's check. */
function decodeError(src: Source, stream: Buffer, out: Float32Array | Uint16Array, wide: Float32Array, bound: number, rung?: number) {
  decompress(stream, { outDtype: src.dtype, out, rung, threads: 2 });
  const got = src.dtype === 'f32' ? (out as Float32Array) : widenBf16(out as Uint16Array, wide);
  return errorStats(src.ref, got, bound, src.dtype === 'bf16');
}

function timeCodec(src: Source, make: (threads: number) => Buffer, out: Float32Array | Uint16Array) {
  const t: Record<string, number> = {};
  let stream!: Buffer;
  for (const threads of [1, 2]) {
    t[`c${threads}`] = best(REPS, () => {
      stream = make(threads);
    });
    t[`d${threads}`] = best(REPS, () => {
      decompress(stream, { outDtype: src.dtype, out, threads });
    });
  }
  return {
    stream,
    compress_gbps_1t: gbps(src.bytes, t.c1),
    decompress_gbps_1t: gbps(src.bytes, t.d1),
    compress_gbps_2t: gbps(src.bytes, t.c2),
    decompress_gbps_2t: gbps(src.bytes, t.d2),
  };
}

type Timed = ReturnType<typeof timeCodec>;

/** A row for one of ebserve's streams: its ratio and timings, and its decode error (at every rung of a ladder). */
function streamRow(src: Source, bound: number, codec: Row['codec'], t: Timed, err: { max: number; within: boolean }, entropy: number, extra: Pick<Row, 'ladder_overhead' | 'note'>): Row {
  return {
    dtype: src.dtype, bound, codec, ratio: src.bytes / t.stream.length,
    compress_gbps_1t: t.compress_gbps_1t, decompress_gbps_1t: t.decompress_gbps_1t,
    compress_gbps_2t: t.compress_gbps_2t, decompress_gbps_2t: t.decompress_gbps_2t,
    max_abs_error: err.max, within_bound: err.within, memcpy_gbps: 0, entropy_ratio: entropy, compressed_bytes: t.stream.length,
    ...extra,
  };
}

/**
 * Each rung of a ladder stream: its bytes up to that rung against `direct(bound, k)` (a direct
 * stream at the rung's bound), and its decode error within that bound.
 */
function ladderOverhead(src: Source, stream: Buffer, out: Float32Array | Uint16Array, wide: Float32Array, bounds: number[], direct: (bound: number, k: number) => number): LadderRung[] {
  const info = inspect(stream);
  return bounds.map((b, k) => {
    const d = direct(b, k);
    const cumulative = info.rungs[k].cumulativeBytes;
    const err = decodeError(src, stream, out, wide, b, k);
    if (err.violations) log(`  BOUND BROKEN at rung ${k} (${b}): ${err.violations} values`);
    return { bound: b, bytes_ratio_vs_direct: cumulative / d, cumulative_bytes: cumulative, direct_bytes: d, max_abs_error: err.max, within_bound: err.violations === 0 };
  });
}

/** The worst rung's error, and whether every rung kept its bound. */
const ladderError = (o: LadderRung[]) => ({ max: o[o.length - 1].max_abs_error, within: o.every((r) => r.within_bound) });

interface ZfpResult {
  bytes: number;
  compress_s: number;
  decompress_s: number | null;
  max_abs_error: number;
  zfp_version: string;
}

function zfpPeer(file: string, tol: number, threads: number): ZfpResult {
  const r = spawnSync(ZFP_PEER, [file, String(tol), String(threads), String(ZFP_REPS)], { encoding: 'utf8' });
  if (r.status !== 0) {
    throw new Error(`zfp_peer ${tol} ${threads} failed (${r.error?.message ?? `exit ${r.status}`}): ${r.stderr}`);
  }
  return JSON.parse(r.stdout.trim()) as ZfpResult;
}

// ---------------------------------------------------------------- run

function main(): void {
  if (!fs.existsSync(ZFP_PEER)) throw new Error(`${ZFP_PEER} is missing: run \`make bench-codec\``);
  fs.mkdirSync(BENCH_DIR, { recursive: true });
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });

  log(`generating ${N} values of N(0, ${SIGMA}) (xorshift128 + Box-Muller, seed 0x${SEED.toString(16)})`);
  const f32 = gaussian(N, SIGMA, SEED);
  const bf16 = toBf16(f32);
  const bf16Wide = widenBf16(bf16);
  const f32File = path.join(BENCH_DIR, 'normal_f32.raw');
  const bf16File = path.join(BENCH_DIR, 'normal_bf16_as_f32.raw');
  fs.writeFileSync(f32File, new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength));
  fs.writeFileSync(bf16File, new Uint8Array(bf16Wide.buffer, bf16Wide.byteOffset, bf16Wide.byteLength));

  const sources: Source[] = [
    { dtype: 'f32', values: f32, ref: f32, bytes: N * 4, bitsPerValue: 32, zfpFile: f32File },
    { dtype: 'bf16', values: bf16, ref: bf16Wide, bytes: N * 2, bitsPerValue: 16, zfpFile: bf16File },
  ];

  const copyDst = new Float32Array(N);
  const memcpyStart = memcpyGbps(f32, copyDst);
  log(`memcpy (dst.set(src), 64 MiB f32, best of ${MEMCPY_REPS}): ${memcpyStart.toFixed(2)} GB/s`);

  const outF32 = new Float32Array(N);
  const outBf16 = new Uint16Array(N);
  const wide = new Float32Array(N);
  const rows: Row[] = [];

  for (const src of sources) {
    const out = src.dtype === 'f32' ? outF32 : outBf16;
    for (const bound of BOUNDS) {
      const tag = `${src.dtype} ${bound.toExponential(0)}`;
      const entropy = src.bitsPerValue / quantizedEntropyBits(src.values, src.dtype, bound);

      // ebserve: a one-rung stream.
      log(`${tag} ebserve`);
      const one = timeCodec(src, (threads) => compress(src.values, { dtype: src.dtype, bound, threads }), out);
      const oneErr = decodeError(src, one.stream, out, wide, bound);
      if (oneErr.violations) log(`  BOUND BROKEN: ${oneErr.violations} values`);
      rows.push(streamRow(src, bound, 'ebserve', one, { max: oneErr.max, within: oneErr.violations === 0 }, entropy,
        src.dtype === 'bf16' ? { note: 'decoded to bf16: the bound there is eb + ulp(out)/2 (FORMAT.md)' } : {}));

      // ebserve-ladder4: four rungs, bounds 8·eb .. eb; timed as a whole (compressLadder, a decode of all rungs).
      log(`${tag} ebserve-ladder4`);
      const bounds = ladderBounds(bound, LADDER_RUNGS);
      const lad = timeCodec(src, (threads) => compressLadder(src.values, { dtype: src.dtype, bounds, threads }), out);
      const overhead = ladderOverhead(src, lad.stream, out, wide, bounds, (b, k) =>
        k === bounds.length - 1 ? one.stream.length : compress(src.values, { dtype: src.dtype, bound: b, threads: 2 }).length);
      rows.push(streamRow(src, bound, 'ebserve-ladder4', lad, ladderError(overhead), entropy, {
        ladder_overhead: overhead,
        note:
          `rungs ${bounds.map((b) => b.toExponential(0)).join(', ')}; ratio, error and timings are of the whole stream ` +
          '(finest rung); ladder_overhead: bytes up to each rung vs a direct stream at that bound' +
          (src.dtype === 'bf16' ? '; decoded to bf16 (bound eb + ulp(out)/2)' : ''),
      }));

      // ebserve-entropy: the same quantized values through the entropy coder (32-lane rANS), one
      // rung and a 4-rung ladder whose overhead is against direct entropy-coded streams.
      for (const rungsOf of [1, LADDER_RUNGS]) {
        const codec = rungsOf === 1 ? 'ebserve-entropy' : 'ebserve-entropy-ladder4';
        log(`${tag} ${codec}`);
        const bs = ladderBounds(bound, rungsOf);
        const ent = timeCodec(src, (threads) => compressLadder(src.values, { dtype: src.dtype, bounds: bs, threads, coder: 'entropy' }), out);
        const einfo = inspect(ent.stream);
        const eover = ladderOverhead(src, ent.stream, out, wide, bs, (b, k) =>
          k === bs.length - 1 && rungsOf === 1 ? ent.stream.length : compress(src.values, { dtype: src.dtype, bound: b, threads: 2, coder: 'entropy' }).length);
        rows.push(streamRow(src, bound, codec, ent, ladderError(eover), entropy, {
          ...(rungsOf > 1 ? { ladder_overhead: eover } : {}),
          note:
            `entropy coder (mode 1, FORMAT.md v2): 32-lane interleaved rANS, CPU decode (${native.info().simd}); ` +
            `${einfo.symbolStats!.symbols} symbols, ${einfo.symbolStats!.rawPlanes} raw planes in rung 0` +
            (rungsOf > 1 ? `; rungs ${bs.map((b) => b.toExponential(0)).join(', ')}, ladder_overhead vs direct entropy streams` : '') +
            (src.dtype === 'bf16' ? '; decoded to bf16 (bound eb + ulp(out)/2)' : ''),
        }));
      }

      // zfp: fixed accuracy, tolerance = bound, on f32 values.
      log(`${tag} zfp (1 thread, then 2 OpenMP threads)`);
      const z1 = zfpPeer(src.zfpFile, bound, 1);
      const z2 = zfpPeer(src.zfpFile, bound, 2);
      if (z1.bytes !== z2.bytes) log(`  note: zfp's 2-thread stream has ${z2.bytes} bytes, the serial one ${z1.bytes}`);
      rows.push({
        dtype: src.dtype,
        bound,
        codec: 'zfp',
        ratio: src.bytes / z1.bytes,
        compress_gbps_1t: gbps(src.bytes, z1.compress_s),
        decompress_gbps_1t: gbps(src.bytes, z1.decompress_s!),
        compress_gbps_2t: gbps(src.bytes, z2.compress_s),
        decompress_gbps_2t: null,
        max_abs_error: Math.max(z1.max_abs_error, z2.max_abs_error),
        within_bound: Math.max(z1.max_abs_error, z2.max_abs_error) <= bound,
        memcpy_gbps: 0,
        entropy_ratio: entropy,
        compressed_bytes: z1.bytes,
        note:
          `ZFP ${z1.zfp_version} fixed accuracy (tolerance = bound), 1-D field, best of ${ZFP_REPS}; ` +
          'decompress_gbps_2t null: ZFP 1.0 compresses with OpenMP (zfp_exec_omp) but decompresses serially' +
          (src.dtype === 'bf16'
            ? '; bf16 source: ZFP is given the bf16 values widened to f32 and decodes to f32 (error vs the bf16 values, ' +
              'not rounded back to bf16); ratio and GB/s count the bf16 bytes'
            : ''),
      });
    }
  }

  const memcpyEnd = memcpyGbps(f32, copyDst);
  const memcpy = Math.max(memcpyStart, memcpyEnd);
  log(`memcpy again: ${memcpyEnd.toFixed(2)} GB/s (reported: the better, ${memcpy.toFixed(2)})`);
  for (const r of rows) r.memcpy_gbps = memcpy;

  const cpus = os.cpus();
  const runSeconds = (performance.now() - t0) / 1000;
  const result = {
    generated: new Date().toISOString(),
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version, simd: native.info().simd },
    memcpy_gbps: memcpy,
    data: {
      values: N,
      distribution: `N(0, ${SIGMA})`,
      generator: `xorshift128 + Box-Muller, seed 0x${SEED.toString(16)}`,
      bf16: 'the f32 values rounded to nearest even',
      reps: { ebserve: REPS, zfp: ZFP_REPS, memcpy: MEMCPY_REPS },
    },
    run_seconds: runSeconds,
    rows,
  };
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');

  printTable(rows, memcpy, result.machine);
  printBars(rows, memcpy);
  console.log(`\nwrote ${path.relative(ROOT, RESULTS)} in ${runSeconds.toFixed(0)} s`);
}

function printTable(rows: Row[], memcpy: number, m: { cpus: number; model: string; node: string; simd: string }): void {
  const f = (x: number | null, d = 2) => (x === null ? 'n/a' : x.toFixed(d));
  console.log(`codec benchmark: 64 MiB N(0, ${SIGMA}) f32 (and as bf16); ${m.cpus} x ${m.model}, node ${m.node}, ${m.simd}`);
  console.log(`memcpy ${memcpy.toFixed(2)} GB/s (one thread); GB/s = source-dtype bytes per second, best of >= 3\n`);
  const head = ['dtype', 'bound', 'codec', 'ratio', 'comp 1t', 'comp 2t', 'decomp 1t', 'decomp 2t', 'max err', 'entropy ratio', 'bound held'];
  const w = [5, 6, 15, 6, 8, 8, 9, 9, 9, 13, 10];
  const line = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  console.log(line(head));
  console.log(line(w.map((n) => '-'.repeat(n))));
  for (const r of rows) {
    console.log(
      line([
        r.dtype,
        r.bound.toExponential(0),
        r.codec,
        f(r.ratio),
        f(r.compress_gbps_1t),
        f(r.compress_gbps_2t),
        f(r.decompress_gbps_1t),
        f(r.decompress_gbps_2t),
        r.max_abs_error.toExponential(2),
        f(r.entropy_ratio),
        r.within_bound ? 'yes' : 'NO',
      ]),
    );
  }
  const ladders = rows.filter((r) => r.ladder_overhead);
  console.log('\nladder4: bytes up to each rung / a direct stream at that rung\'s bound (loosest rung first):');
  for (const r of ladders) {
    const cells = r.ladder_overhead!.map(
      (o) => `${o.bound.toExponential(0)}: ${o.bytes_ratio_vs_direct.toFixed(3)} (${(o.cumulative_bytes / 1e6).toFixed(2)}/${(o.direct_bytes / 1e6).toFixed(2)} MB)`,
    );
    console.log(`  ${r.dtype.padEnd(4)} ${r.bound.toExponential(0)}  ${cells.join('  ')}`);
  }
}

function printBars(rows: Row[], memcpy: number): void {
  const find = (dtype: DType, bound: number) => rows.find((r) => r.codec === 'ebserve' && r.dtype === dtype && r.bound === bound);
  const f = find('f32', 1e-3);
  const b = find('bf16', 1e-3);
  if (!f || !b) return;
  const bar = (ok: boolean, what: string) => console.log(`${ok ? 'PASS' : 'MISS'}  ${what}`);
  console.log('\n"done when" bars (ebserve, eb 1e-3):');
  bar(f.ratio >= 5.0, `f32 ratio ${f.ratio.toFixed(2)} >= 5.0`);
  bar(f.decompress_gbps_1t >= 4, `f32 decompress 1t ${f.decompress_gbps_1t.toFixed(2)} GB/s >= 4`);
  bar(
    f.decompress_gbps_1t >= 0.4 * memcpy,
    `f32 decompress 1t ${f.decompress_gbps_1t.toFixed(2)} GB/s >= 0.4 x memcpy = ${(0.4 * memcpy).toFixed(2)}`,
  );
  bar(f.compress_gbps_1t >= 1, `f32 compress 1t ${f.compress_gbps_1t.toFixed(2)} GB/s >= 1`);
  bar(
    f.decompress_gbps_2t! >= 1.6 * f.decompress_gbps_1t,
    `f32 decompress 2t ${f.decompress_gbps_2t!.toFixed(2)} GB/s >= 1.6 x 1t = ${(1.6 * f.decompress_gbps_1t).toFixed(2)}`,
  );
  bar(b.ratio >= 2.5, `bf16 ratio ${b.ratio.toFixed(2)} >= 2.5`);
}

main();
