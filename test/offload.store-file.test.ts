// The store file laid out per expert (src/offload/store-format.ts), built by streaming
// (store-build.ts) and read one expert at a time (store-reader.ts): every block starts on a
// 4096-byte boundary and any level of an expert is one aligned read; the streamed file holds the
// same bytes as the in-memory build and decodes within its bounds; the build holds only a few
// experts of the source at once; a damaged byte on disk is caught by its expert's CRC-32C with the
// layer, expert and offset named; and reading one expert reads that expert's bytes only.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { decodeTensor } from '../src/codec/halfs-array.js';
import { decompressRungs, ladderBounds } from '../src/codec/index.js';
import { DEFAULT_LADDER, type Ladder } from '../src/offload/plan.js';
import { MATRICES } from '../src/offload/source.js';
import { buildStoreFile } from '../src/offload/store-build.js';
import { StoreFileWriter } from '../src/offload/store-writer.js';
import { openStore, readStoreFile, StoreCacheError, StoreChecksumError, StoreFileReader, storeFileName, writeStoreFile } from '../src/offload/store-file.js';
import { buildStore, type BuildProgress, type ExpertStore } from '../src/offload/store.js';
import { fakeSource, type FakeSource } from './offload/fake-source.js';

const ALIGN = 4096;
const ABS: Ladder = { bounds: ladderBounds(5e-4, 3), boundMode: 'abs', exact: true };

function maxAbsError(a: Float32Array, b: Float32Array): number {
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
  return err;
}

function flip(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] ^= 0x10;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
}

/** Where a part (a view of the reader's aligned read) sits in the file: found by content, the parts being distinct random bytes. */
function fileOffsetOf(file: string, part: Buffer): number {
  const at = fs.readFileSync(file).indexOf(part);
  assert.ok(at >= 0, 'part not found in the file');
  return at;
}

describe('offload: the store file, per expert', function () {
  let dir: string;
  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-store-file-'));
  });
  afterEach(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('streaming build', function () {
    for (const [name, src, ladder] of [
      ['BF16, σ ladder + exact', fakeSource({ numLayers: 3, numExperts: 4, seed: 21 }), DEFAULT_LADDER],
      ['F32, abs ladder + exact', fakeSource({ numLayers: 2, numExperts: 3, dtype: 'F32', seed: 22 }), ABS],
      ['BF16, no exact level', fakeSource({ numLayers: 2, numExperts: 3, seed: 23 }), { ...ABS, exact: false }],
    ] as [string, FakeSource, Ladder][]) {
      it(`writes the same store as the in-memory build, every rung within its bound (${name})`, async function () {
        const file = path.join(dir, 'x.ebstore');
        const seen: BuildProgress[] = [];
        const r = await buildStoreFile(src, ladder, file, { onProgress: (p) => seen.push({ ...p }) });
        assert.equal(r.experts, src.numLayers * src.numExperts);
        assert.equal(r.fileBytes, fs.statSync(file).size);
        assert.equal(r.sourceBytes, src.numLayers * src.numExperts * 3 * src.d * src.ff * (src.dtype === 'F32' ? 4 : 2));
        assert.deepEqual(
          seen.map((p) => [p.done, p.total, p.layer, p.expert]),
          Array.from({ length: r.experts }, (_, i) => [i + 1, r.experts, Math.floor(i / src.numExperts), i % src.numExperts]),
        );
        assert.equal(seen.at(-1)!.bytesRead, r.sourceBytes);
        assert.deepEqual(fs.readdirSync(dir), ['x.ebstore'], 'no temporary file left behind');

        const fromFile = readStoreFile(file, src.hash, ladder);
        const inMemory = await buildStore(src, ladder);
        for (let l = 0; l < src.numLayers; l++) {
          for (let e = 0; e < src.numExperts; e++) {
            const raw = src.readExpert(l, e);
            for (const m of MATRICES) {
              const [a, b] = [fromFile.expert(l, e)[m], inMemory.expert(l, e)[m]];
              const where = `layer ${l} expert ${e} ${m}`;
              assert.ok(a.head.equals(b.head), `${where}: head`);
              a.rungs.forEach((r, k) => assert.ok(r.equals(b.rungs[k]), `${where}: rung ${k}`));
              assert.deepEqual(a.bounds, b.bounds, where);
              assert.deepEqual([a.dtype, a.shape], [raw[m].dtype, raw[m].shape], where);
              if (ladder.exact) assert.ok(a.exact!.equals(raw[m].bytes), `${where}: exact bytes`);
              else assert.equal(a.exact, undefined, where);
              const original = decodeTensor(raw[m].bytes, raw[m].dtype);
              for (let k = 0; k < a.rungs.length; k++) {
                const err = maxAbsError(decompressRungs(a.head, a.rungs.slice(0, k + 1)) as Float32Array, original);
                assert.ok(err <= a.bounds[k], `${where} rung ${k}: error ${err} > bound ${a.bounds[k]}`);
              }
            }
          }
        }
        // writeStoreFile of the in-memory store writes the very same file.
        writeStoreFile(path.join(dir, 'y.ebstore'), inMemory);
        assert.ok(fs.readFileSync(file).equals(fs.readFileSync(path.join(dir, 'y.ebstore'))), 'streamed and in-memory files differ');
      });
    }

    for (const inFlight of [1, 2, 4]) {
      it(`holds at most ${inFlight} expert(s) read ahead of the one it writes (inFlight ${inFlight})`, async function () {
        const src = fakeSource({ numLayers: 3, numExperts: 5, seed: 24 });
        let ahead = 0;
        await buildStoreFile(src, ABS, path.join(dir, 'x.ebstore'), { inFlight, onProgress: (p) => (ahead = Math.max(ahead, src.reads - p.done)) });
        assert.equal(src.reads, 15, 'every expert read once');
        assert.equal(ahead, inFlight, `read ${ahead} experts ahead`);
      });
    }

    it('leaves nothing behind and says why when the source fails mid-build', async function () {
      const src = fakeSource({ numLayers: 2, numExperts: 3, seed: 25 });
      const read = src.readExpert.bind(src);
      src.readExpert = (l, e) => {
        if (l === 1 && e === 1) throw new Error('shard unreadable');
        return read(l, e);
      };
      await assert.rejects(buildStoreFile(src, ABS, path.join(dir, 'x.ebstore')), /shard unreadable/);
      assert.deepEqual(fs.readdirSync(dir), []);
    });

    it('refuses inFlight below 1 or fractional', async function () {
      for (const bad of [0, -1, 1.5, NaN]) await assert.rejects(buildStoreFile(fakeSource(), ABS, path.join(dir, 'x.ebstore'), { inFlight: bad }), RangeError, `inFlight ${bad}`);
    });
  });

  describe('layout and reads', function () {
    const src = fakeSource({ numLayers: 2, numExperts: 3, d: 64, ff: 96, seed: 26 });
    let store: ExpertStore;
    let file: string;
    beforeEach(async function () {
      file = path.join(dir, 'x.ebstore');
      await buildStoreFile(src, DEFAULT_LADDER, file);
      store = readStoreFile(file, src.hash, DEFAULT_LADDER);
    });

    it('starts every expert on a 4096-byte boundary and reads any level of it with one aligned read', function () {
      const f = StoreFileReader.open(file, { checkpointHash: src.hash, ladder: DEFAULT_LADDER });
      try {
        assert.equal(f.levels, DEFAULT_LADDER.bounds.length + 1);
        const starts = new Set<number>();
        for (let l = 0; l < src.numLayers; l++) {
          for (let e = 0; e < src.numExperts; e++) {
            const block = f.readRange(l, e, 0);
            assert.equal(block.offset % ALIGN, 0);
            starts.add(block.offset);
            for (let held = -1; held < f.levels - 1; held++) {
              for (let level = 0; level < f.levels; level++) {
                const r = f.readRange(l, e, level, held);
                const where = `layer ${l} expert ${e} held ${held} level ${level}`;
                assert.equal(r.offset % ALIGN, 0, where);
                assert.equal(r.length % ALIGN, 0, where);
                assert.ok(r.offset + r.length <= f.size, where);
                const before = f.bytesRead;
                const parts = f.readExpert(l, e, level, held);
                assert.equal(f.bytesRead - before, r.length, `${where}: one read of the range`);
                // Every part it returns lies in that range of the file, and is what the in-memory store moves.
                const want = store.partsToMove(l, e, held, level);
                for (const m of MATRICES) {
                  assert.equal(parts[m].length, want[m].length, `${where} ${m}`);
                  parts[m].forEach((p, i) => {
                    assert.ok(p.equals(want[m][i]), `${where} ${m} part ${i}`);
                    if (p.byteLength > 64) {
                      const at = fileOffsetOf(file, p);
                      assert.ok(at >= r.offset && at + p.byteLength <= r.offset + r.length, `${where} ${m} part ${i} at ${at} outside the read`);
                    }
                  });
                }
              }
            }
          }
        }
        assert.equal(starts.size, src.numLayers * src.numExperts, 'one block per expert');
      } finally {
        f.close();
      }
    });

    it('reads the coarsest level as a prefix much shorter than the expert, and the exact level without the rungs', function () {
      const f = StoreFileReader.open(file);
      const coarse = f.readRange(1, 2, 0);
      const exact = f.readRange(1, 2, f.exact);
      const whole = f.readRange(1, 2, f.exact - 1); // every codec rung
      assert.ok(coarse.length < whole.length, `${coarse.length} ≥ ${whole.length}`);
      assert.ok(exact.offset >= whole.offset + whole.length - ALIGN, 'exact bytes come after the rungs');
      assert.ok(exact.length <= store.originalBytes(1, 2) + 2 * ALIGN);
      f.close();
    });

    it('names the layer, expert, level and file offset when a byte of an expert is flipped on disk, and still reads the others', function () {
      const f0 = StoreFileReader.open(file);
      const rung1 = f0.readExpert(1, 2, 1, 0).up[0]; // rung 1 of layer 1 expert 2's up matrix
      f0.close();
      const at = fileOffsetOf(file, rung1) + 5;
      flip(file, at);
      const f = StoreFileReader.open(file, { checkpointHash: src.hash, ladder: DEFAULT_LADDER }); // the index is intact
      try {
        assert.doesNotThrow(() => f.readExpert(1, 2, 0), 'level 0 does not contain the byte');
        for (const [level, held] of [[1, -1], [1, 0], [3, 0], [f.exact - 1, -1]]) {
          assert.throws(
            () => f.readExpert(1, 2, level, held),
            (e: unknown) => {
              assert.ok(e instanceof StoreChecksumError && e instanceof StoreCacheError, String(e));
              assert.deepEqual([e.code, e.layer, e.expert, e.level], ['DAMAGED', 1, 2, 1]);
              assert.ok(e.offset <= at && at < e.offset + e.length, `offset ${e.offset}+${e.length} does not hold byte ${at}`);
              assert.match(e.message, new RegExp(`layer 1 expert 2, level 1 \\(bytes ${e.offset}\\.\\.`));
              assert.ok(e.message.includes(file));
              return true;
            },
            `level ${level} held ${held}`,
          );
        }
        assert.throws(() => f.loadExpert(1, 2), StoreChecksumError);
        assert.doesNotThrow(() => f.readExpert(1, 2, f.exact), 'the exact bytes are another segment');
        for (let l = 0; l < src.numLayers; l++) for (let e = 0; e < src.numExperts; e++) if (l !== 1 || e !== 2) assert.doesNotThrow(() => f.loadExpert(l, e), `layer ${l} expert ${e}`);
      } finally {
        f.close();
      }
      assert.throws(() => readStoreFile(file, src.hash, DEFAULT_LADDER), StoreChecksumError);
    });

    it('reads one expert without reading the rest of the file', function () {
      // Every byte of the file outside expert (0, 1)'s block and the preamble and index destroyed:
      // reading that expert still gives the right bytes.
      const f0 = StoreFileReader.open(file);
      const block = f0.readRange(0, 1, f0.exact);
      const first = f0.readRange(0, 1, 0);
      const indexAt = Number(fs.readFileSync(file).readBigUInt64LE(16));
      f0.close();
      const buf = fs.readFileSync(file);
      for (let i = ALIGN; i < indexAt; i++) if (i < first.offset || i >= block.offset + block.length) buf[i] = 0xa5;
      fs.writeFileSync(file, buf);
      const f = StoreFileReader.open(file);
      try {
        for (let level = 0; level < f.levels; level++) {
          const parts = f.readExpert(0, 1, level);
          const want = store.partsToMove(0, 1, -1, level);
          for (const m of MATRICES) parts[m].forEach((p, i) => assert.ok(p.equals(want[m][i]), `level ${level} ${m} part ${i}`));
        }
        assert.throws(() => f.readExpert(0, 0, 0), StoreChecksumError);
        assert.throws(() => f.readExpert(0, 2, 0), StoreChecksumError);
      } finally {
        f.close();
      }
    });

    it('checks and cuts bytes the caller read itself from readRange (as a direct-I/O reader will)', function () {
      const f = StoreFileReader.open(file);
      const fd = fs.openSync(file, 'r');
      try {
        for (const [level, held] of [[0, -1], [3, 1], [f.exact, 2]]) {
          const r = f.readRange(1, 1, level, held);
          const bytes = Buffer.alloc(r.length);
          fs.readSync(fd, bytes, 0, r.length, r.offset);
          const want = store.partsToMove(1, 1, held, level);
          const got = f.partsFromRead(1, 1, level, held, bytes);
          for (const m of MATRICES) {
            assert.equal(got[m].length, want[m].length);
            got[m].forEach((p, i) => assert.ok(p.equals(want[m][i]), `level ${level} held ${held} ${m} part ${i}`));
          }
          assert.throws(() => f.partsFromRead(1, 1, level, held, bytes.subarray(1)), /bytes given, its read range is/);
          const at = want.gate[0].byteLength > 8 ? fileOffsetOf(file, want.gate[0]) + 3 : NaN;
          bytes[at - r.offset] ^= 1;
          assert.throws(
            () => f.partsFromRead(1, 1, level, held, bytes),
            (e: unknown) => e instanceof StoreChecksumError && e.layer === 1 && e.expert === 1 && e.offset <= at && at < e.offset + e.length,
          );
        }
      } finally {
        fs.closeSync(fd);
        f.close();
      }
    });

    it('refuses levels, held rungs and experts the file does not have, and reads after close', function () {
      const f = StoreFileReader.open(file);
      for (const bad of [-1, f.levels, 0.5, NaN]) assert.throws(() => f.readExpert(0, 0, bad), RangeError, `level ${bad}`);
      for (const bad of [-2, f.levels, 0.5]) assert.throws(() => f.readExpert(0, 0, 1, bad), RangeError, `held ${bad}`);
      assert.throws(() => f.readExpert(src.numLayers, 0, 0), RangeError);
      assert.throws(() => f.readExpert(0, src.numExperts, 0), RangeError);
      for (const m of MATRICES) assert.deepEqual(f.readExpert(0, 0, 1, 2)[m], [], 'nothing to read when held ≥ level');
      f.close();
      assert.throws(() => f.readExpert(0, 0, 0), /after close/);
    });
  });

  describe('index geometry and the writer', function () {
    const src = fakeSource({ numLayers: 2, numExperts: 2, seed: 28 });

    /** Rewrites the file's index through `edit`, with a matching sha256 and preamble: only the geometry checks can catch it. */
    function editIndex(file: string, edit: (index: { experts: { offset: number; matrices: Record<string, { rungs: [number, number][] }> }[][] }) => void): void {
      const buf = fs.readFileSync(file);
      const at = Number(buf.readBigUInt64LE(16));
      const index = JSON.parse(buf.subarray(at).toString('utf8'));
      edit(index);
      const json = Buffer.from(JSON.stringify(index), 'utf8');
      const head = Buffer.from(buf.subarray(0, at));
      head.writeBigUInt64LE(BigInt(json.byteLength), 24);
      createHash('sha256').update(json).digest().copy(head, 32);
      fs.writeFileSync(file, Buffer.concat([head, json]));
    }

    const edits: [string, RegExp, Parameters<typeof editIndex>[1]][] = [
      ['a block offset off its 4096-byte boundary', /layer 1 expert 0: block offset \d+ is not aligned/, (h) => (h.experts[1][0].offset += 8)],
      ['two blocks overlapping', /layer 0 expert 1: block offset/, (h) => (h.experts[0][1].offset = h.experts[0][0].offset)],
      ['a rung outside its level’s segment', /layer 0 expert 1 up rung 1: range .* outside its segment 1/, (h) => (h.experts[0][1].matrices.up.rungs[1] = h.experts[0][1].matrices.up.rungs[0])],
    ];
    for (const [what, message, edit] of edits) {
      it(`refuses an index with ${what}, naming the expert`, async function () {
        const file = path.join(dir, 'x.ebstore');
        await buildStoreFile(src, ABS, file);
        editIndex(file, edit);
        assert.throws(() => StoreFileReader.open(file), (e: unknown) => e instanceof StoreCacheError && e.code === 'DAMAGED' && message.test(e.message));
      });
    }

    it('opens an index edited back to what it was (the edit itself breaks nothing)', async function () {
      const file = path.join(dir, 'x.ebstore');
      await buildStoreFile(src, ABS, file);
      editIndex(file, () => {});
      assert.doesNotThrow(() => readStoreFile(file, src.hash, ABS));
    });

    it('refuses experts appended out of order, with the wrong rungs, or a finish before the last', async function () {
      const store = await buildStore(src, ABS);
      const w = StoreFileWriter.create(path.join(dir, 'w.ebstore'), { checkpoint: src.hash, ladder: ABS, numLayers: 2, numExperts: 2 });
      assert.throws(() => w.append(0, 1, store.expert(0, 1)), /\(0, 1\) appended, \(0, 0\) expected/);
      const e = store.expert(0, 0);
      assert.throws(() => w.append(0, 0, { ...e, up: { ...e.up, rungs: e.up.rungs.slice(1) } }), /up: 2 rungs, the ladder has 3/);
      assert.throws(() => w.append(0, 0, { ...e, down: { ...e.down, exact: undefined } }), /down: exact bytes missing/);
      w.append(0, 0, e);
      w.append(0, 1, store.expert(0, 1));
      assert.throws(() => w.finish(), /finish after 1 layers \(of 2\)/);
      w.abort();
      assert.deepEqual(fs.readdirSync(dir), []);
    });
  });

  describe('versions', function () {
    const src = fakeSource({ numLayers: 1, numExperts: 2, seed: 27 });

    for (const version of [1, 3, 0xffffffff]) {
      it(`calls a file of format version ${version} stale, naming both versions, and openStore rebuilds it`, async function () {
        const file = storeFileName(dir, src.hash, ABS);
        await openStore(src, ABS, dir);
        const buf = fs.readFileSync(file);
        buf.writeUInt32LE(version, 8);
        fs.writeFileSync(file, buf);
        assert.throws(
          () => readStoreFile(file, src.hash, ABS),
          (e: unknown) => e instanceof StoreCacheError && e.code === 'STALE' && e.message.includes(`format version ${version}`) && e.message.includes('reads version 2'),
        );
        const again = await openStore(src, ABS, dir);
        assert.equal(again.from, 'built');
        assert.ok(again.notes.some((n) => n.includes('stale') && n.includes(`format version ${version}`)), again.notes.join('; '));
        assert.equal((await openStore(src, ABS, dir)).from, 'cache');
      });
    }

    it('calls a version-1 file as the previous build wrote it (48-byte header, then JSON) stale', async function () {
      const file = storeFileName(dir, src.hash, ABS);
      const json = Buffer.from('{"checkpoint":"x"}');
      const fixed = Buffer.alloc(48);
      fixed.write('EBSTORE\0', 0, 'latin1');
      fixed.writeUInt32LE(1, 8);
      fixed.writeUInt32LE(json.byteLength, 12);
      fs.writeFileSync(file, Buffer.concat([fixed, json]));
      assert.throws(() => readStoreFile(file, src.hash, ABS), (e: unknown) => e instanceof StoreCacheError && e.code === 'STALE');
      const opened = await openStore(src, ABS, dir);
      assert.equal(opened.from, 'built');
      assert.ok(opened.notes.some((n) => n.includes('format version 1')), opened.notes.join('; '));
    });
  });
});
