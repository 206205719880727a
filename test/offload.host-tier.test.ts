// The disk tier's host side (src/offload/host-tier.ts) on a real store file read with direct I/O:
// every answer equals the in-memory store's partsToMove; what host memory holds is never read
// again, a tighter level reads only the rungs it lacks, the budget is never exceeded (LRU), each
// read is a measured `read` sample, and a damaged byte on disk fails the read naming its expert.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { DirectFile } from '../src/offload/direct-file.js';
import { DiskExpertStore } from '../src/offload/disk-store.js';
import { ExpertFetcher } from '../src/offload/fetcher.js';
import { CopyLink } from '../src/offload/link.js';
import { HostTier } from '../src/offload/host-tier.js';
import { DEFAULT_LADDER } from '../src/offload/plan.js';
import { MATRICES } from '../src/offload/source.js';
import { buildStoreFile } from '../src/offload/store-build.js';
import { StoreChecksumError, StoreFileReader } from '../src/offload/store-file.js';
import { buildStore, type ExpertStore } from '../src/offload/store.js';
import { TelemetryBus, type OffloadSample } from '../src/offload/telemetry.js';
import { fakeSource } from './offload/fake-source.js';

describe('offload: the host tier over the store file (disk tier)', function () {
  this.timeout(60_000);
  const src = fakeSource({ numLayers: 2, numExperts: 4, seed: 31 });
  let dir: string;
  let file: string;
  let store: ExpertStore;
  before(async function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-host-tier-'));
    file = path.join(dir, 'x.ebstore');
    await buildStoreFile(src, DEFAULT_LADDER, file);
    store = await buildStore(src, DEFAULT_LADDER);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  function open(budgetBytes: number) {
    const reader = StoreFileReader.open(file);
    const direct = DirectFile.open(file);
    const bus = new TelemetryBus();
    const reads: Extract<OffloadSample, { kind: 'read' }>[] = [];
    bus.on((s) => s.kind === 'read' && reads.push(s));
    const host = new HostTier({ reader, file: direct, budgetBytes, telemetry: bus });
    return { host, reads, close: () => (reader.close(), direct.close()) };
  }
  const same = (a: Record<string, Buffer[]>, b: Record<string, Buffer[]>, what: string) => {
    for (const m of MATRICES) {
      assert.equal(a[m].length, b[m].length, `${what}: ${m} parts`);
      a[m].forEach((x, i) => assert.ok(x.equals(b[m][i]), `${what}: ${m} part ${i}`));
    }
  };

  it('answers what the in-memory store answers, at every (held, level), reading each level from the disk once', async function () {
    const { host, reads, close } = open(1e9);
    try {
      for (let l = 0; l < src.numLayers; l++) {
        for (let e = 0; e < src.numExperts; e++) {
          // Level 1 first, then up to 3 (reads rungs 2..3 only), then every question again from memory.
          same(await host.partsToMove(l, e, -1, 1), store.partsToMove(l, e, -1, 1), `${l}/${e} -1→1`);
          same(await host.partsToMove(l, e, 1, 3), store.partsToMove(l, e, 1, 3), `${l}/${e} 1→3`);
          same(await host.partsToMove(l, e, -1, store.exact), store.partsToMove(l, e, -1, store.exact), `${l}/${e} exact`);
          for (let held = -1; held < 3; held++) for (let level = held + 1; level <= 3; level++) same(await host.partsToMove(l, e, held, level), store.partsToMove(l, e, held, level), `${l}/${e} ${held}→${level} from memory`);
        }
      }
      const experts = src.numLayers * src.numExperts;
      assert.equal(reads.length, 3 * experts, 'three reads per expert: levels 0..1, 2..3, exact');
      assert.deepEqual(reads.slice(0, 3).map((r) => [r.fromRung, r.rung]), [[0, 1], [2, 3], [store.exact, store.exact]]);
      for (const r of reads) assert.ok(r.bytes > 0 && r.bytes % 4096 === 0 && r.seconds >= 0, 'whole blocks, timed');
      assert.equal(host.stats.reads, reads.length);
      assert.equal(host.stats.bytesRead, reads.reduce((n, r) => n + r.bytes, 0));
    } finally {
      close();
    }
  });

  it('holds no more than its budget, evicting the least recently used expert, and reads an evicted one again', async function () {
    // Room for about two experts' levels 0..2.
    const probe = open(1e9);
    await probe.host.partsToMove(0, 0, -1, 2);
    const one = probe.host.stats.bytesRead;
    probe.close();
    const { host, reads, close } = open(2.5 * one);
    try {
      for (const e of [0, 1, 2]) await host.partsToMove(0, e, -1, 2);
      assert.ok(host.tier.used <= 2.5 * one, `${host.tier.used} bytes held, budget ${2.5 * one}`);
      assert.deepEqual(host.tier.keys().sort(), [1, 2], 'expert 0 (least recently used) evicted');
      const before = reads.length;
      same(await host.partsToMove(0, 2, -1, 2), store.partsToMove(0, 2, -1, 2), 'a held expert');
      assert.equal(reads.length, before, 'served from memory');
      same(await host.partsToMove(0, 0, -1, 2), store.partsToMove(0, 0, -1, 2), 'an evicted expert, read again');
      assert.equal(reads.length, before + 1);
      // A budget smaller than one expert serves it anyway and keeps nothing.
      const tiny = open(100);
      same(await tiny.host.partsToMove(1, 3, -1, 2), store.partsToMove(1, 3, -1, 2), 'through a tiny budget');
      assert.equal(tiny.host.tier.used, 0);
      tiny.close();
    } finally {
      close();
    }
  });

  it('shares one read among concurrent asks for an expert', async function () {
    const { host, reads, close } = open(1e9);
    try {
      const all = await Promise.all(Array.from({ length: 6 }, () => host.partsToMove(1, 2, -1, 3)));
      all.forEach((p) => same(p, store.partsToMove(1, 2, -1, 3), 'concurrent'));
      assert.equal(reads.length, 1);
    } finally {
      close();
    }
  });

  it('counts a move\'s wait for the disk in its transfer sample, named disk+copy, and reads an expert held in host memory no more', async function () {
    const bus = new TelemetryBus();
    const samples: OffloadSample[] = [];
    bus.on((x) => samples.push(x));
    const disk = DiskExpertStore.open(file, { checkpointHash: src.hash, ladder: DEFAULT_LADDER }, { budgetBytes: 1e9, telemetry: bus });
    // Tier A holds one expert: asking for a second one evicts the first from the device, not from the host.
    const fetcher = new ExpertFetcher({ store: disk, link: new CopyLink(), budget: { tierABytes: disk.expertValues(0, 0) * 4, tierBBytes: 0 }, telemetry: bus, form: 'f32' });
    try {
      for (const e of [0, 1, 0]) (await fetcher.acquire(0, e, 2)).release();
      const transfers = samples.filter((x) => x.kind === 'transfer') as Extract<OffloadSample, { kind: 'transfer' }>[];
      const reads = samples.filter((x) => x.kind === 'read') as Extract<OffloadSample, { kind: 'read' }>[];
      assert.deepEqual(transfers.map((t) => [t.expert, t.link]), [[0, 'disk+copy'], [1, 'disk+copy'], [0, 'disk+copy']]);
      assert.equal(reads.length, 2, 'expert 0 came back from host memory: no second read');
      assert.ok(transfers[0].seconds >= reads[0].seconds, 'a move that read the disk waited at least the read');
      assert.equal(disk.totalBytes(), disk.host.tier.used);
    } finally {
      fetcher.close();
      disk.close();
    }
  });

  it('fails a read of a damaged expert with its layer, expert and file offset, and still serves the others', async function () {
    const damaged = path.join(dir, 'damaged.ebstore');
    fs.copyFileSync(file, damaged);
    const reader = StoreFileReader.open(damaged);
    const range = reader.readRange(1, 1, 0, -1);
    const fd = fs.openSync(damaged, 'r+');
    fs.writeSync(fd, Buffer.from([0xff, 0x00, 0xff]), 0, 3, range.offset + 300);
    fs.closeSync(fd);
    const direct = DirectFile.open(damaged);
    const host = new HostTier({ reader, file: direct, budgetBytes: 1e9 });
    try {
      await assert.rejects(host.partsToMove(1, 1, -1, 0), (e: Error) => e instanceof StoreChecksumError && e.layer === 1 && e.expert === 1 && /layer 1 expert 1/.test(e.message) && e.message.includes(damaged));
      same(await host.partsToMove(1, 0, -1, 0), store.partsToMove(1, 0, -1, 0), 'an undamaged expert of the same file');
      assert.equal(host.tier.peek(1 * src.numExperts + 1), undefined, 'nothing kept of the damaged one');
    } finally {
      reader.close();
      direct.close();
    }
  });
});
