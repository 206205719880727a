/**
 * The baselines a user would pick instead of an error-bounded codec: round-to-nearest integer
 * quantization of every expert weight, stored as the expert store's direct (exact) level so it
 * travels through the same link, cache and engine as everything else.
 *
 * - int8: symmetric, one scale per output row (absmax / 127), scales stored as f16;
 *   bytes = values + 2 · rows.
 * - int4g64: symmetric, one scale per group of 64 consecutive values along a row (absmax / 7),
 *   values in −7..7 packed two per byte (low nibble first), scales as f16;
 *   bytes = values / 2 + 2 · values / 64.
 * The quantization uses the f16-rounded scale, so dequantization reproduces exactly what was
 * rounded against.
 */
import { decodeTensor, f16ToF32, f32ToF16 } from '../../src/codec/halfs-array.js';
import { MATRICES, type ExpertSource } from '../../src/offload/source.js';
import { ExpertStore, type StoredExpert, type StoredMatrix } from '../../src/offload/store.js';

export type QuantScheme = 'int8' | 'int4g64';

const GROUP = 64;

function f16Scale(absmax: number, levels: number): number {
  const s = f16ToF32(f32ToF16(Float32Array.of(absmax / levels)))[0];
  return s > 0 ? s : 1; // an all-zero group: any scale gives zeros
}

export function quantize(x: Float32Array, rows: number, scheme: QuantScheme): Uint8Array {
  const cols = x.length / rows;
  if (scheme === 'int8') {
    const out = new Uint8Array(rows * 2 + x.length);
    const scales = new Float32Array(rows);
    for (let r = 0; r < rows; r++) {
      let m = 0;
      for (let c = 0; c < cols; c++) m = Math.max(m, Math.abs(x[r * cols + c]));
      scales[r] = f16Scale(m, 127);
    }
    out.set(new Uint8Array(f32ToF16(scales).buffer), 0);
    const q = new Int8Array(out.buffer, rows * 2);
    for (let i = 0; i < x.length; i++) q[i] = Math.max(-127, Math.min(127, Math.round(x[i] / scales[Math.floor(i / cols)])));
    return out;
  }
  if (x.length % GROUP !== 0 || cols % GROUP !== 0) throw new RangeError(`int4g64 needs rows of a multiple of ${GROUP} values, got ${cols}`);
  const groups = x.length / GROUP;
  const out = new Uint8Array(groups * 2 + x.length / 2);
  const scales = new Float32Array(groups);
  for (let g = 0; g < groups; g++) {
    let m = 0;
    for (let i = g * GROUP; i < (g + 1) * GROUP; i++) m = Math.max(m, Math.abs(x[i]));
    scales[g] = f16Scale(m, 7);
  }
  out.set(new Uint8Array(f32ToF16(scales).buffer), 0);
  const packed = out.subarray(groups * 2);
  for (let i = 0; i < x.length; i++) {
    const q = Math.max(-7, Math.min(7, Math.round(x[i] / scales[Math.floor(i / GROUP)]))) & 0xf;
    packed[i >> 1] |= i & 1 ? q << 4 : q;
  }
  return out;
}

export function dequantize(bytes: Uint8Array, shape: number[], scheme: QuantScheme): Float32Array {
  const [rows, cols] = shape;
  const n = rows * cols;
  const out = new Float32Array(n);
  const scaleCount = scheme === 'int8' ? rows : n / GROUP;
  const scales = f16ToF32(new Uint16Array(bytes.slice(0, scaleCount * 2).buffer));
  const body = bytes.subarray(scaleCount * 2);
  if (scheme === 'int8') {
    const q = new Int8Array(body.buffer, body.byteOffset, n);
    for (let i = 0; i < n; i++) out[i] = q[i] * scales[Math.floor(i / cols)];
  } else {
    for (let i = 0; i < n; i++) {
      const nib = (body[i >> 1] >> (i & 1 ? 4 : 0)) & 0xf;
      out[i] = (nib >= 8 ? nib - 16 : nib) * scales[Math.floor(i / GROUP)];
    }
  }
  return out;
}

/** An expert store whose direct level holds `scheme`-quantized weights instead of the originals. */
export class QuantizedStore extends ExpertStore {
  constructor(
    base: ExpertStore,
    source: ExpertSource,
    readonly scheme: QuantScheme,
  ) {
    const experts: StoredExpert[][] = base.entries().map((row, l) =>
      row.map((stored, e) => {
        const raw = source.readExpert(l, e);
        const q = {} as StoredExpert;
        for (const m of MATRICES) {
          const values = decodeTensor(raw[m].bytes, raw[m].dtype);
          q[m] = { ...stored[m], exact: Buffer.from(quantize(values, raw[m].shape[0], scheme)) };
        }
        return q;
      }),
    );
    super({ ...base.ladder, exact: true }, base.numLayers, base.numExperts, base.checkpointHash, experts);
  }

  override get exactIsOriginal(): boolean {
    return false;
  }

  override decodeExact(m: StoredMatrix, bytes: Uint8Array): Float32Array {
    return dequantize(bytes, m.shape, this.scheme);
  }
}
