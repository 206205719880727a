// The disk tier's reads (src/offload/direct-file.ts over src/native/direct_file.cc): positioned
// reads of a real file, around the page cache where the file system allows it, each timed. Any
// range reads back exactly the file's bytes, many at once, up to the file's last byte; what cannot
// be read is refused with an error that names the file and the byte.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { DIRECT_ALIGN, DirectFile } from '../src/offload/direct-file.js';

describe('direct file reads (the disk tier)', function () {
  this.timeout(30_000);
  let dir: string;
  let file: string;
  let data: Buffer;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-direct-'));
    file = path.join(dir, 'store.bin');
    data = randomBytes(5 * DIRECT_ALIGN + 1234); // ends mid-block, as a store file may
    fs.writeFileSync(file, data);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads any range exactly, aligned or not, up to the last byte, and times each read', async function () {
    const f = DirectFile.open(file);
    try {
      const ranges: [number, number][] = [[0, DIRECT_ALIGN], [0, 1], [4095, 2], [DIRECT_ALIGN, 3 * DIRECT_ALIGN], [777, 9000], [data.length - 10, 10], [0, data.length], [data.length, 0]];
      for (const [offset, length] of ranges) {
        const r = await f.read(offset, length);
        assert.ok(r.bytes.equals(data.subarray(offset, offset + length)), `bytes ${offset}..${offset + length}`);
        assert.ok(r.seconds >= 0 && Number.isFinite(r.seconds), 'a read has its own time');
        assert.equal(r.bytesRead % DIRECT_ALIGN, 0, 'whole blocks cross');
        assert.ok(r.bytesRead >= length && r.bytesRead < length + 2 * DIRECT_ALIGN, `the aligned range around ${offset}+${length}`);
      }
      // Many at once on the pool, each its own bytes.
      const many = await Promise.all(Array.from({ length: 32 }, (_, i) => f.read(i * 509, 4000)));
      many.forEach((r, i) => assert.ok(r.bytes.equals(data.subarray(i * 509, i * 509 + 4000)), `concurrent read ${i}`));
      assert.equal(typeof f.direct, 'boolean');
    } finally {
      f.close();
    }
  });

  it('refuses a range past the end, a closed file, a missing one and a bad offset, naming the file and the byte', async function () {
    const f = DirectFile.open(file);
    await assert.rejects(f.read(data.length - 10, 11), (e: Error) => e instanceof RangeError && e.message.includes(file) && e.message.includes(`ends at byte ${data.length}`));
    await assert.rejects(f.read(-1, 10), /whole offset and length/);
    await assert.rejects(f.read(0.5, 10), /whole offset and length/);
    const inFlight = f.read(0, data.length);
    f.close(); // a read in flight still completes: the descriptor stays open for it
    assert.ok((await inFlight).bytes.equals(data));
    await assert.rejects(f.read(0, 10), /after it was closed/);
    assert.throws(() => DirectFile.open(path.join(dir, 'missing.bin')), (e: Error & { code?: string }) => e.code === 'ENOENT' && e.message.includes('missing.bin'));
  });
});
