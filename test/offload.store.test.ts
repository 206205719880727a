// The expert store (src/offload/store.ts) and its disk cache (src/offload/store-file.ts): every
// rung of every stored matrix decodes within the bound the store records for it, the exact level
// is the checkpoint's own bytes, the store moves exactly the parts a level needs on top of what
// the device holds, and the cache file is reused only when it is sound and made for this
// checkpoint and ladder — any damage, truncation or staleness rebuilds and rewrites it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { decodeTensor } from '../src/codec/halfs-array.js';
import { decompressRungs, inspect, ladderBounds } from '../src/codec/index.js';
import { DEFAULT_LADDER, type Ladder } from '../src/offload/plan.js';
import { MATRICES } from '../src/offload/source.js';
import { openStore, readStoreFile, StoreCacheError, storeFileName, writeStoreFile, defaultCacheDir } from '../src/offload/store-file.js';
import { buildStore, type BuildProgress, type ExpertStore } from '../src/offload/store.js';
import { fakeSource, type FakeSource } from './offload/fake-source.js';

const ABS: Ladder = { bounds: ladderBounds(5e-4, 4), boundMode: 'abs', exact: true }; // 4e-3 .. 5e-4
const SIGMA: Ladder = DEFAULT_LADDER; // σ/2 .. σ/32, and the exact bytes

/** Population σ of `x`, in doubles. */
function sigmaOf(x: Float32Array): number {
  let mean = 0;
  for (const v of x) mean += v;
  mean /= x.length;
  let s = 0;
  for (const v of x) s += (v - mean) ** 2;
  return Math.sqrt(s / x.length);
}

function maxAbsError(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
  return err;
}

/** Every head, rung, exact buffer, bound, shape and dtype of two stores is identical. */
function assertSameStore(a: ExpertStore, b: ExpertStore): void {
  assert.equal(a.numLayers, b.numLayers);
  assert.equal(a.numExperts, b.numExperts);
  assert.equal(a.checkpointHash, b.checkpointHash);
  assert.deepEqual(a.ladder, b.ladder);
  for (let l = 0; l < a.numLayers; l++) {
    for (let e = 0; e < a.numExperts; e++) {
      for (const m of MATRICES) {
        const [x, y] = [a.expert(l, e)[m], b.expert(l, e)[m]];
        const where = `layer ${l} expert ${e} ${m}`;
        assert.equal(x.dtype, y.dtype, where);
        assert.deepEqual(x.shape, y.shape, where);
        assert.deepEqual(x.bounds, y.bounds, where);
        assert.ok(Buffer.compare(x.head, y.head) === 0, `${where}: head differs`);
        assert.equal(x.rungs.length, y.rungs.length, where);
        x.rungs.forEach((r, k) => assert.ok(Buffer.compare(r, y.rungs[k]) === 0, `${where}: rung ${k} differs`));
        assert.equal(Boolean(x.exact), Boolean(y.exact), where);
        if (x.exact && y.exact) assert.ok(Buffer.compare(x.exact, y.exact) === 0, `${where}: exact bytes differ`);
      }
    }
  }
}

const isCacheError = (code: 'DAMAGED' | 'STALE') => (e: unknown) => e instanceof StoreCacheError && e.code === code;

describe('offload: expert store', function () {
  const cases: [string, FakeSource, Ladder][] = [
    ['BF16, abs ladder', fakeSource({ numLayers: 3 }), ABS],
    ['BF16, sigma ladder', fakeSource({ numLayers: 3 }), SIGMA],
    ['F32, sigma ladder', fakeSource({ numLayers: 2, dtype: 'F32', seed: 5 }), SIGMA],
  ];

  for (const [name, src, ladder] of cases) {
    describe(name, function () {
      let store: ExpertStore;
      before(async function () {
        store = await buildStore(src, ladder);
      });

      it('decodes every rung of every matrix within the bound it stores for that matrix', function () {
        for (let l = 0; l < src.numLayers; l++) {
          for (let e = 0; e < src.numExperts; e++) {
            const raw = src.readExpert(l, e);
            for (const m of MATRICES) {
              const s = store.expert(l, e)[m];
              const original = decodeTensor(raw[m].bytes, raw[m].dtype);
              assert.equal(s.rungs.length, ladder.bounds.length);
              assert.equal(s.bounds.length, ladder.bounds.length);
              for (let k = 0; k < s.rungs.length; k++) {
                const out = decompressRungs(s.head, s.rungs.slice(0, k + 1)) as Float32Array;
                const err = maxAbsError(out, original);
                assert.ok(err <= s.bounds[k], `layer ${l} expert ${e} ${m} rung ${k}: error ${err} > bound ${s.bounds[k]}`);
                // The loosest rung is really lossy: the bound is used, not met from far below.
                if (k === 0) assert.ok(err > s.bounds[0] / 2, `layer ${l} expert ${e} ${m}: rung 0 error ${err} far under its bound ${s.bounds[0]}`);
              }
            }
          }
        }
      });

      it(`stores bounds that read the ladder as ${ladder.boundMode} says, loosest first`, function () {
        for (let l = 0; l < src.numLayers; l++) {
          for (let e = 0; e < src.numExperts; e++) {
            const raw = src.readExpert(l, e);
            for (const m of MATRICES) {
              const s = store.expert(l, e)[m];
              const scale = ladder.boundMode === 'sigma' ? sigmaOf(decodeTensor(raw[m].bytes, raw[m].dtype)) : 1;
              s.bounds.forEach((b, k) => {
                const asked = ladder.bounds[k] * scale;
                assert.ok(Math.abs(b - asked) <= asked * 1e-4, `layer ${l} expert ${e} ${m} rung ${k}: bound ${b}, asked ${asked}`);
                if (k > 0) assert.ok(b < s.bounds[k - 1], `rung ${k} bound ${b} not tighter than rung ${k - 1}'s`);
              });
            }
          }
        }
      });

      it("keeps the exact level's bytes equal to the source's", function () {
        assert.equal(store.exact, ladder.bounds.length);
        for (let l = 0; l < src.numLayers; l++) {
          for (let e = 0; e < src.numExperts; e++) {
            const raw = src.readExpert(l, e);
            for (const m of MATRICES) {
              const s = store.expert(l, e)[m];
              assert.ok(s.exact && Buffer.compare(s.exact, raw[m].bytes) === 0, `layer ${l} expert ${e} ${m}`);
              assert.equal(s.dtype, src.dtype);
              assert.deepEqual(s.shape, raw[m].shape);
            }
          }
        }
      });
    });
  }

  describe('levels and parts to move', function () {
    const src = fakeSource({ numLayers: 2, numExperts: 2, seed: 9 });
    let store: ExpertStore;
    before(async function () {
      store = await buildStore(src, SIGMA);
    });

    it('counts its levels: the rungs, then the exact level', function () {
      assert.equal(store.levels, SIGMA.bounds.length + 1);
      assert.equal(store.exact, SIGMA.bounds.length);
    });

    it('costs more bytes at every finer level, and the exact level costs the original bytes', function () {
      for (let l = 0; l < src.numLayers; l++) {
        for (let e = 0; e < src.numExperts; e++) {
          const sizes = Array.from({ length: store.levels }, (_, k) => store.levelBytes(l, e, k));
          for (let k = 1; k < sizes.length; k++) assert.ok(sizes[k] > sizes[k - 1], `layer ${l} expert ${e}: level ${k} ${sizes[k]} bytes ≤ level ${k - 1} ${sizes[k - 1]}`);
          assert.equal(sizes[store.exact], store.originalBytes(l, e));
          assert.equal(store.originalBytes(l, e), 3 * src.d * src.ff * 2);
          assert.equal(store.expertValues(l, e), 3 * src.d * src.ff);
          // A rung level costs what the codec says decoding at that rung costs.
          for (let k = 0; k < store.exact; k++) {
            const codec = MATRICES.reduce((sum, m) => {
              const s = store.expert(l, e)[m];
              return sum + inspect(s.head, { rungs: s.rungs }).rungs[k].cumulativeBytes;
            }, 0);
            assert.equal(sizes[k], codec, `layer ${l} expert ${e} level ${k}`);
          }
        }
      }
    });

    it('reports per-layer level sizes as the mean over the layer’s experts', function () {
      for (let l = 0; l < src.numLayers; l++) {
        const per = store.layerLevelBytes(l);
        assert.equal(per.length, store.levels);
        per.forEach((b, k) => {
          let sum = 0;
          for (let e = 0; e < src.numExperts; e++) sum += store.levelBytes(l, e, k);
          assert.equal(b, sum / src.numExperts);
        });
      }
    });

    it('moves the head (only when nothing is held) and rungs held+1..level of every matrix', function () {
      for (let l = 0; l < src.numLayers; l++) {
        for (let e = 0; e < src.numExperts; e++) {
          for (let h = -1; h < store.exact; h++) {
            for (let k = 0; k < store.exact; k++) {
              const parts = store.partsToMove(l, e, h, k);
              assert.deepEqual(Object.keys(parts), [...MATRICES]);
              for (const m of MATRICES) {
                const s = store.expert(l, e)[m];
                const want = h >= k ? [] : [...(h < 0 ? [s.head] : []), ...s.rungs.slice(h + 1, k + 1)];
                const where = `layer ${l} expert ${e} ${m}, held ${h} → level ${k}`;
                assert.equal(parts[m].length, want.length, where);
                parts[m].forEach((p, i) => assert.ok(Buffer.compare(p, want[i]) === 0, `${where}: part ${i}`));
              }
            }
          }
        }
      }
    });

    it('moves the original bytes for the exact level, whatever is held', function () {
      const raw = src.readExpert(1, 1);
      for (let h = -1; h < store.exact; h++) {
        const parts = store.partsToMove(1, 1, h, store.exact);
        for (const m of MATRICES) {
          assert.equal(parts[m].length, 1, `held ${h} ${m}`);
          assert.ok(Buffer.compare(parts[m][0], raw[m].bytes) === 0, `held ${h} ${m}`);
        }
      }
    });

    it('refuses levels that are not one of its levels, and experts it does not have', function () {
      for (const bad of [-1, store.levels, store.levels + 3, 0.5, NaN, Infinity]) {
        assert.throws(() => store.partsToMove(0, 0, -1, bad), RangeError, `partsToMove level ${bad}`);
        assert.throws(() => store.levelBytes(0, 0, bad), RangeError, `levelBytes level ${bad}`);
      }
      assert.throws(() => store.expert(src.numLayers, 0), RangeError);
      assert.throws(() => store.expert(0, src.numExperts), RangeError);
      assert.throws(() => store.partsToMove(-1, 0, -1, 0), RangeError);
    });

    it('has no exact level when the ladder has none', async function () {
      const noExact = await buildStore(fakeSource({ numLayers: 1, numExperts: 1 }), { ...SIGMA, exact: false });
      assert.equal(noExact.levels, SIGMA.bounds.length);
      assert.equal(noExact.exact, -1);
      for (const m of MATRICES) assert.equal(noExact.expert(0, 0)[m].exact, undefined);
      assert.throws(() => noExact.levelBytes(0, 0, SIGMA.bounds.length), RangeError);
      assert.ok(noExact.levelBytes(0, 0, SIGMA.bounds.length - 1) > 0);
    });

    it('counts every stored byte in totalBytes', function () {
      let sum = 0;
      for (let l = 0; l < src.numLayers; l++) {
        for (let e = 0; e < src.numExperts; e++) sum += store.levelBytes(l, e, store.exact - 1) + store.levelBytes(l, e, store.exact);
      }
      assert.equal(store.totalBytes(), sum);
    });
  });

  describe('buildStore', function () {
    it('reports progress done 1..total in order, layer by layer, expert by expert', async function () {
      const src = fakeSource({ numLayers: 3, numExperts: 2 });
      const seen: BuildProgress[] = [];
      const store = await buildStore(src, ABS, (p) => seen.push({ ...p }));
      const want: BuildProgress[] = [];
      for (let l = 0; l < 3; l++) for (let e = 0; e < 2; e++) want.push({ done: want.length + 1, total: 6, layer: l, expert: e });
      assert.deepEqual(seen, want);
      assert.equal(store.checkpointHash, src.hash);
      assert.equal(store.numLayers, 3);
      assert.equal(store.numExperts, 2);
    });
  });
});

describe('offload: expert store disk cache', function () {
  let dir: string;
  let src: FakeSource;
  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-store-'));
    src = fakeSource({ numLayers: 2, numExperts: 2, seed: 3 });
  });
  afterEach(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** The file's layout (src/offload/store-format.ts): the preamble, then the blocks, then the index. */
  function layout(file: string): { dataStart: number; indexStart: number; size: number } {
    const buf = fs.readFileSync(file);
    return { dataStart: 4096, indexStart: Number(buf.readBigUInt64LE(16)), size: buf.byteLength };
  }

  function flip(file: string, at: number): void {
    const buf = fs.readFileSync(file);
    buf[at] ^= 0x20;
    fs.writeFileSync(file, buf);
  }

  it('keeps its default cache folder inside the model folder', function () {
    assert.equal(path.dirname(defaultCacheDir('/models/m')), '/models/m');
  });

  it('builds without a cache file, then loads the same bytes from the file it wrote', async function () {
    const built: BuildProgress[] = [];
    let ahead = 0;
    const first = await openStore(src, SIGMA, dir, (p) => {
      built.push(p);
      ahead = Math.max(ahead, src.reads - p.done);
    });
    assert.ok(ahead <= 2, `the build read ${ahead} experts ahead of the one it wrote (it streams: 2 at most)`);
    assert.equal(first.from, 'built');
    assert.equal(first.file, storeFileName(dir, src.hash, SIGMA));
    assert.ok(first.notes.some((n) => n.includes('no cache file')), first.notes.join('; '));
    assert.ok(fs.existsSync(first.file));
    assert.equal(built.length, 4);
    assert.deepEqual(fs.readdirSync(dir), [path.basename(first.file)], 'no temporary file left behind');

    const reads = src.reads;
    const loaded: BuildProgress[] = [];
    const second = await openStore(src, SIGMA, dir, (p) => loaded.push(p));
    assert.equal(second.from, 'cache');
    assert.equal(second.file, first.file);
    assert.deepEqual(second.notes, []);
    assert.equal(src.reads, reads, 'the checkpoint is not read again');
    assert.equal(loaded.length, 0, 'no build progress when loading');
    assertSameStore(first.store, second.store);
    assert.equal(second.store.totalBytes(), first.store.totalBytes());
  });

  it('round-trips a store through writeStoreFile and readStoreFile', async function () {
    const store = await buildStore(src, ABS);
    const file = path.join(dir, 'sub', 'x.ebstore');
    writeStoreFile(file, store);
    assertSameStore(store, readStoreFile(file, src.hash, ABS));
  });

  const regions: [string, (f: string) => number][] = [
    ['the preamble (its index sha256)', () => 40],
    ['the index', (f) => Math.floor((layout(f).indexStart + layout(f).size) / 2)],
    ['the data', (f) => Math.floor((layout(f).dataStart + layout(f).indexStart) / 2)],
  ];
  for (const [where, at] of regions) {
    it(`detects a flipped byte in ${where}, rebuilds, and rewrites the file`, async function () {
      const first = await openStore(src, SIGMA, dir);
      flip(first.file, at(first.file));
      assert.throws(() => readStoreFile(first.file, src.hash, SIGMA), isCacheError('DAMAGED'));
      const second = await openStore(src, SIGMA, dir);
      assert.equal(second.from, 'built');
      assert.ok(second.notes.some((n) => n.includes('damaged')), second.notes.join('; '));
      assertSameStore(first.store, second.store);
      const third = await openStore(src, SIGMA, dir);
      assert.equal(third.from, 'cache', third.notes.join('; '));
      assertSameStore(first.store, third.store);
    });
  }

  it('refuses a file with any byte of its preamble flipped (a version byte as stale, any other as damaged)', async function () {
    const { file } = await openStore(src, ABS, dir);
    const good = fs.readFileSync(file);
    for (const at of [...Array.from({ length: 64 }, (_, i) => i), 64, 1000, 4095]) {
      const bad = Buffer.from(good);
      bad[at] ^= 0x01;
      fs.writeFileSync(file, bad);
      const code = at >= 8 && at < 12 ? 'STALE' : 'DAMAGED';
      assert.throws(() => readStoreFile(file, src.hash, ABS), isCacheError(code), `byte ${at}`);
    }
  });

  it('refuses a flipped byte anywhere in the data, padding included', async function () {
    const { file } = await openStore(src, ABS, dir);
    const good = fs.readFileSync(file);
    const { dataStart, indexStart } = layout(file);
    for (const at of [dataStart, dataStart + 1, Math.floor((dataStart + indexStart) / 2), indexStart - 1]) {
      const bad = Buffer.from(good);
      bad[at] ^= 0x80;
      fs.writeFileSync(file, bad);
      assert.throws(() => readStoreFile(file, src.hash, ABS), isCacheError('DAMAGED'), `byte ${at}`);
    }
  });

  it('detects a truncated file, rebuilds, and rewrites it', async function () {
    const first = await openStore(src, SIGMA, dir);
    const good = fs.readFileSync(first.file);
    const { indexStart } = layout(first.file);
    for (const len of [0, 7, 11, 30, 64, 4095, 4096, indexStart - 1, indexStart, good.byteLength - 1]) {
      fs.writeFileSync(first.file, good.subarray(0, len));
      assert.throws(() => readStoreFile(first.file, src.hash, SIGMA), isCacheError('DAMAGED'), `truncated to ${len} bytes`);
    }
    const second = await openStore(src, SIGMA, dir);
    assert.equal(second.from, 'built');
    assert.ok(second.notes.some((n) => n.includes('damaged')), second.notes.join('; '));
    assert.equal(fs.readFileSync(first.file).byteLength, good.byteLength);
    assert.equal((await openStore(src, SIGMA, dir)).from, 'cache');
  });

  const otherLadders: [string, Ladder][] = [
    ['other bounds', { ...SIGMA, bounds: ladderBounds(0.0625, 3) }],
    ['another bound mode', { ...SIGMA, boundMode: 'rel' }],
    ['no exact level', { ...SIGMA, exact: false }],
  ];
  for (const [what, ladder] of otherLadders) {
    it(`builds anew for a changed ladder (${what}), in another file`, async function () {
      const old = await openStore(src, SIGMA, dir);
      const next = await openStore(src, ladder, dir);
      assert.equal(next.from, 'built');
      assert.notEqual(next.file, old.file);
      assert.ok(next.notes.some((n) => n.includes('no cache file')), next.notes.join('; '));
      assert.deepEqual(next.store.ladder, ladder);
      assert.throws(() => readStoreFile(old.file, src.hash, ladder), isCacheError('STALE'));
      // Both files stay, each loadable for its own ladder.
      assert.equal((await openStore(src, SIGMA, dir)).from, 'cache');
      assert.equal((await openStore(src, ladder, dir)).from, 'cache');
    });
  }

  it('builds anew for a changed checkpoint hash, in another file', async function () {
    const old = await openStore(src, SIGMA, dir);
    src.hash = 'another-checkpoint';
    const next = await openStore(src, SIGMA, dir);
    assert.equal(next.from, 'built');
    assert.notEqual(next.file, old.file);
    assert.equal(next.store.checkpointHash, 'another-checkpoint');
    assert.throws(() => readStoreFile(old.file, 'another-checkpoint', SIGMA), isCacheError('STALE'));
    assert.equal((await openStore(src, SIGMA, dir)).from, 'cache');
  });

  it('rebuilds a stale file found under the current name, saying it was stale', async function () {
    const old = await openStore(src, SIGMA, dir);
    src.hash = 'another-checkpoint';
    const file = storeFileName(dir, src.hash, SIGMA);
    fs.copyFileSync(old.file, file);
    const next = await openStore(src, SIGMA, dir);
    assert.equal(next.from, 'built');
    assert.ok(next.notes.some((n) => n.includes('stale')), next.notes.join('; '));
    assert.equal(readStoreFile(file, src.hash, SIGMA).checkpointHash, 'another-checkpoint', 'rewritten for the new checkpoint');
  });

  it('never writes anything with cacheDir null', async function () {
    const f = fs as unknown as Record<string, unknown>;
    const names = ['writeFileSync', 'renameSync', 'mkdirSync', 'openSync', 'writeSync', 'copyFileSync', 'appendFileSync'];
    const saved = names.map((n) => f[n]);
    const calls: string[] = [];
    names.forEach((n, i) => {
      f[n] = (...args: unknown[]) => {
        calls.push(n);
        return (saved[i] as (...a: unknown[]) => unknown)(...args);
      };
    });
    try {
      const opened = await openStore(src, SIGMA, null);
      assert.equal(opened.from, 'built');
      assert.equal(opened.file, '');
      assert.deepEqual(opened.notes, []);
      assert.equal(calls.length, 0, calls.join(', '));
      assert.ok(opened.store.levelBytes(0, 0, 0) > 0);
      // The spy does see the writes a cache folder causes.
      await openStore(src, SIGMA, dir);
      assert.ok(calls.includes('writeSync') && calls.includes('renameSync'), calls.join(', '));
    } finally {
      names.forEach((n, i) => (f[n] = saved[i]));
    }
  });

  it('still gives a working store when the cache folder cannot be written, saying so', async function () {
    const blocker = path.join(dir, 'a-file');
    fs.writeFileSync(blocker, 'not a folder');
    const opened = await openStore(src, SIGMA, path.join(blocker, 'cache'));
    assert.equal(opened.from, 'built');
    assert.ok(opened.notes.some((n) => n.includes('could not write')), opened.notes.join('; '));
    const s = opened.store.expert(1, 1).up;
    const original = decodeTensor(src.readExpert(1, 1).up.bytes, 'BF16');
    assert.ok(maxAbsError(decompressRungs(s.head, s.rungs) as Float32Array, original) <= s.bounds[s.bounds.length - 1]);
    assert.deepEqual(fs.readdirSync(dir), ['a-file']);
  });

  it('rebuilds when the cache file cannot be read at all, saying so', async function () {
    const cacheDir = path.join(dir, 'unreadable');
    fs.mkdirSync(path.join(cacheDir, path.basename(storeFileName(cacheDir, src.hash, SIGMA))), { recursive: true }); // a folder where the file should be
    const opened = await openStore(src, SIGMA, cacheDir);
    assert.equal(opened.from, 'built');
    assert.ok(opened.notes.some((n) => n.includes('cannot be read')), opened.notes.join('; '));
    assert.ok(opened.notes.some((n) => n.includes('could not write')), opened.notes.join('; '));
  });
});
