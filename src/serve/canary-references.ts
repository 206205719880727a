/**
 * The canaries' references in a file beside the expert store, so that the server computes them
 * once (one batched pass over every item, every layer exact) and a restart reads them: at a real
 * model's size each canary item touches nearly every expert, and computing the references item by
 * item while serving re-read the whole exact store per item.
 *
 * The file, `canary-references-<key>.bin` in the store's cache folder, little-endian:
 *
 *   offset   size       what
 *   0        8          magic "EBCANREF"
 *   8        4          format version (u32), 1
 *   12       4          V, the vocabulary size (u32)
 *   16       32         the key (sha256, raw bytes; see referenceKey)
 *   48       4          N, the number of text items (u32)
 *   52       8·N        per item: T, its token count (u32); from, its first continuation position (u32)
 *   …                   per item: tokens (T × i32), argmax (R × i32), log-probabilities (R × V × f32), R = T − from
 *   end − 32 32         sha256 of every byte before it
 *
 * Reading checks all of it — magic, version, V, key, that the sizes account for the file's
 * length exactly, the checksum — and a file that fails any check is never used: the caller logs
 * why (ReferenceFileError names the file) and computes the references again. Writing goes to a
 * temporary file renamed into place, so a crash leaves the old file or none, never half of one.
 *
 * @example
 * const key = referenceKey({ checkpointHash, forward: 'native', reference: 'exact', vocabSize: V, inputs });
 * const got = await readOrComputeReferences({ file: referenceFileName(cacheDir, key), key, vocabSize: V, inputs, compute });
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Reference, ReferenceInput } from '../control/canaries.js';

const MAGIC = Buffer.from('EBCANREF', 'latin1');
export const REFERENCE_FILE_VERSION = 1;
const FIXED_BYTES = 52;
const CHECKSUM_BYTES = 32;

/** A reference file that cannot be used; the message names the file and says why. */
export class ReferenceFileError extends Error {}

export interface ReferenceKeyParts {
  /** The checkpoint's hash, as the expert store is keyed by it. */
  checkpointHash: string;
  /** Which forward computed them: 'native', or 'tfjs:<backend>' (their last bits may differ). */
  forward: string;
  /** What the reference engine computes: 'exact', or the finest rung of a ladder without an exact level, and the form experts are multiplied in. */
  reference: string;
  vocabSize: number;
  /** Every text item's tokens and first continuation position, in order. */
  inputs: ReferenceInput[];
}

/** sha256 (hex) of everything the references depend on: another checkpoint, forward or set of items is another key. */
export function referenceKey(p: ReferenceKeyParts): string {
  const canonical = JSON.stringify({ format: REFERENCE_FILE_VERSION, checkpoint: p.checkpointHash, forward: p.forward, reference: p.reference, vocab: p.vocabSize, items: p.inputs.map((i) => [i.from, i.tokens]) });
  return createHash('sha256').update(canonical).digest('hex');
}

/** The reference file for `key` in `cacheDir`. */
export function referenceFileName(cacheDir: string, key: string): string {
  return path.join(cacheDir, `canary-references-${key.slice(0, 20)}.bin`);
}

function checkLittleEndian(): void {
  // The arrays are copied byte for byte; a big-endian host would read them swapped.
  if (os.endianness() !== 'LE') throw new Error('canary reference files are little-endian; this host is not');
}

/** Writes `refs` (of a vocabulary of `vocabSize`) to `file` under `key`: a temporary file renamed into place. */
export function writeReferenceFile(file: string, key: string, vocabSize: number, refs: Reference[]): void {
  checkLittleEndian();
  const keyBytes = Buffer.from(key, 'hex');
  if (keyBytes.length !== 32) throw new RangeError(`a reference key is a sha256 in hex, got ${JSON.stringify(key)}`);
  const head = Buffer.alloc(FIXED_BYTES + 8 * refs.length);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(REFERENCE_FILE_VERSION, 8);
  head.writeUInt32LE(vocabSize, 12);
  keyBytes.copy(head, 16);
  head.writeUInt32LE(refs.length, 48);
  const parts: Buffer[] = [head];
  refs.forEach((r, i) => {
    const rows = r.tokens.length - r.from;
    if (r.argmax.length !== rows || r.logProbs.length !== rows || r.logProbs.some((p) => p.length !== vocabSize)) throw new RangeError(`canary reference ${i}: ${rows} rows of ${vocabSize} expected`);
    head.writeUInt32LE(r.tokens.length, FIXED_BYTES + 8 * i);
    head.writeUInt32LE(r.from, FIXED_BYTES + 8 * i + 4);
    parts.push(Buffer.from(Int32Array.from(r.tokens).buffer), Buffer.from(r.argmax.buffer, r.argmax.byteOffset, r.argmax.byteLength));
    for (const p of r.logProbs) parts.push(Buffer.from(p.buffer, p.byteOffset, p.byteLength));
  });
  const sum = createHash('sha256');
  for (const p of parts) sum.update(p);
  parts.push(sum.digest());
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, Buffer.concat(parts));
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * The references in `file`, which must have been written under `key` for a vocabulary of
 * `vocabSize`; throws ReferenceFileError naming the file and the first check that failed.
 */
export function readReferenceFile(file: string, key: string, vocabSize: number): Reference[] {
  checkLittleEndian();
  const bad = (why: string) => new ReferenceFileError(`${file}: ${why}`);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw bad(`cannot be read (${(e as Error).message})`);
  }
  if (buf.length < FIXED_BYTES + CHECKSUM_BYTES) throw bad(`truncated: ${buf.length} bytes, shorter than a header`);
  if (!buf.subarray(0, 8).equals(MAGIC)) throw bad('not a canary reference file (wrong magic)');
  const version = buf.readUInt32LE(8);
  if (version !== REFERENCE_FILE_VERSION) throw bad(`format version ${version}, this build reads ${REFERENCE_FILE_VERSION}`);
  const V = buf.readUInt32LE(12);
  if (V !== vocabSize) throw bad(`made for a vocabulary of ${V}, the model's is ${vocabSize}`);
  const n = buf.readUInt32LE(48);
  // What the header's sizes make the file's length: they must account for every byte.
  let expected = FIXED_BYTES + 8 * n + CHECKSUM_BYTES;
  const sizes: { tokens: number; from: number }[] = [];
  for (let i = 0; i < n && expected <= buf.length; i++) {
    const tokens = buf.readUInt32LE(FIXED_BYTES + 8 * i);
    const from = buf.readUInt32LE(FIXED_BYTES + 8 * i + 4);
    if (from >= tokens) throw bad(`item ${i}: first continuation position ${from} is not one of its ${tokens} tokens`);
    sizes.push({ tokens, from });
    expected += 4 * tokens + 4 * (tokens - from) * (1 + V);
  }
  if (expected > buf.length) throw bad(`truncated: ${buf.length} bytes, the header's sizes need ${sizes.length < n ? 'at least ' : ''}${expected}`);
  if (expected < buf.length) throw bad(`${buf.length} bytes, the header's sizes account for ${expected}: not the file that was written`);
  const stored = buf.subarray(16, 48).toString('hex');
  if (stored !== key) throw bad(`made for other canaries, checkpoint or forward (key ${stored.slice(0, 12)}…, now ${key.slice(0, 12)}…)`);
  const body = buf.subarray(0, buf.length - CHECKSUM_BYTES);
  if (!createHash('sha256').update(body).digest().equals(buf.subarray(buf.length - CHECKSUM_BYTES))) throw bad('checksum mismatch: the file is damaged');
  let at = FIXED_BYTES + 8 * n;
  // Copies into fresh (aligned) arrays: the payload's offsets are not multiples of 4 in general.
  const take = (bytes: number): ArrayBuffer => {
    const out = new ArrayBuffer(bytes);
    new Uint8Array(out).set(buf.subarray(at, at + bytes));
    at += bytes;
    return out;
  };
  return sizes.map(({ tokens, from }) => {
    const rows = tokens - from;
    const tokenIds = Array.from(new Int32Array(take(4 * tokens)));
    const argmax = new Int32Array(take(4 * rows));
    const logProbs = Array.from({ length: rows }, () => new Float32Array(take(4 * V)));
    return { tokens: tokenIds, from, argmax, logProbs };
  });
}

export interface ReferencesFromFile {
  references: Reference[];
  /** 'file': read from `file`; 'computed': computed now (and saved, unless `notSaved` says why not). */
  source: 'file' | 'computed';
  file: string;
  /** Seconds the computation took ('computed'). */
  seconds: number;
  /** Why the file was not used (damaged, mismatched), one line each. */
  rejected?: string;
  /** Why the computed references were not written. */
  notSaved?: string;
}

/**
 * The references of `inputs`: read from `file` when it is there and sound and made for `key`,
 * else computed by `compute` and written to it. A file that is there but fails a check is
 * reported in `rejected` and replaced; a file that cannot be written leaves the references
 * computed and says why in `notSaved` (the next start computes them again).
 */
export async function readOrComputeReferences(o: {
  file: string;
  key: string;
  vocabSize: number;
  inputs: ReferenceInput[];
  compute: () => Promise<Reference[]>;
}): Promise<ReferencesFromFile> {
  let rejected: string | undefined;
  if (fs.existsSync(o.file)) {
    try {
      const references = readReferenceFile(o.file, o.key, o.vocabSize);
      if (references.length !== o.inputs.length || references.some((r, i) => r.from !== o.inputs[i].from || r.tokens.join() !== o.inputs[i].tokens.join())) {
        throw new ReferenceFileError(`${o.file}: holds other items than these canaries' under their key`);
      }
      return { references, source: 'file', file: o.file, seconds: 0 };
    } catch (e) {
      if (!(e instanceof ReferenceFileError)) throw e;
      rejected = e.message;
    }
  }
  const started = performance.now();
  const references = await o.compute();
  const seconds = (performance.now() - started) / 1000;
  let notSaved: string | undefined;
  try {
    writeReferenceFile(o.file, o.key, o.vocabSize, references);
  } catch (e) {
    notSaved = (e as Error).message;
  }
  return { references, source: 'computed', file: o.file, seconds, rejected, notSaved };
}
