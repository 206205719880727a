// bin/ebserve's codec commands, run as a user runs them: a real process on real files.
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { f32ToBf16Bits, bf16BitsToF32 } from '../src/codec/halfs.js';
import { gaussian } from './codec/data.js';
import { ebserve } from './helpers/ebserve.js';


describe('ebserve compress / decompress / inspect', function () {
  let dir: string;
  const x = gaussian(100_000, 0.02, 21);
  before(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ebserve-cli-'));
    await fs.writeFile(path.join(dir, 'w.f32'), new Uint8Array(x.buffer));
  });
  after(async function () {
    await fs.rm(dir, { recursive: true, force: true });
  });
  const p = (f: string) => path.join(dir, f);

  it('round-trips an f32 file within the bound', async function () {
    const c = await ebserve('compress', '--dtype', 'f32', '--bound', '1e-3', p('w.f32'), p('w.ebc'));
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, /100000 f32 values/);
    const d = await ebserve('decompress', p('w.ebc'), p('back.f32'));
    assert.equal(d.code, 0, d.stderr);
    const back = new Float32Array((await fs.readFile(p('back.f32'))).buffer.slice(0));
    assert.equal(back.length, x.length);
    for (let i = 0; i < x.length; i++) assert.ok(Math.abs(back[i] - x[i]) <= 1e-3);
  });

  it('compresses bf16 as a 4-rung ladder and decodes one rung to f32', async function () {
    const bits = Uint16Array.from(x, (v) => f32ToBf16Bits(v));
    await fs.writeFile(p('w.bf16'), new Uint8Array(bits.buffer));
    const c = await ebserve('compress', '--dtype', 'bf16', '--bound', '1e-3', '--rungs', '4', p('w.bf16'), p('l.ebc'));
    assert.equal(c.code, 0, c.stderr);
    const d = await ebserve('decompress', '--out-dtype', 'f32', '--rung', '1', p('l.ebc'), p('l1.f32'));
    assert.equal(d.code, 0, d.stderr);
    const back = new Float32Array((await fs.readFile(p('l1.f32'))).buffer.slice(0));
    for (let i = 0; i < x.length; i++) assert.ok(Math.abs(back[i] - bf16BitsToF32(bits[i])) <= 4e-3);
    const j = await ebserve('inspect', '--json', p('l.ebc'));
    const info = JSON.parse(j.stdout);
    assert.equal(info.dtype, 'bf16');
    assert.deepEqual(info.rungs.map((r: { droppedPlanes: number }) => r.droppedPlanes), [3, 2, 1, 0]);
    const t = await ebserve('inspect', p('l.ebc'));
    assert.match(t.stdout, /checksums ok/);
    assert.match(t.stdout, /rung {2}bound/);
  });

  it('reports a damaged stream on stderr with exit code 1 and writes nothing', async function () {
    const stream = await fs.readFile(p('w.ebc'));
    stream[stream.length - 5] ^= 0x10;
    await fs.writeFile(p('bad.ebc'), stream);
    const d = await ebserve('decompress', p('bad.ebc'), p('never.f32'));
    assert.equal(d.code, 1);
    assert.match(d.stderr, /rung 0 checksum does not match.*\[CHECKSUM\]/);
    await assert.rejects(fs.access(p('never.f32')));
    const i = await ebserve('inspect', p('bad.ebc'));
    assert.equal(i.code, 1);
  });

  it('answers usage errors with exit code 2 and the usage text', async function () {
    for (const args of [
      ['compress', '--dtype', 'f64', '--bound', '1e-3', p('w.f32'), p('o')],
      ['compress', '--dtype', 'f32', '--bound', '-1', p('w.f32'), p('o')],
      ['compress', '--dtype', 'f32', p('w.f32'), p('o')],
      ['compress', '--dtype', 'f32', '--bound', '1e-3', '--rungs', '40', p('w.f32'), p('o')],
      ['compress', '--dtype', 'f32', '--bound', '1e-3', '--frobnicate', p('w.f32'), p('o')],
      ['decompress', p('w.ebc')],
      ['frobnicate'],
    ]) {
      const r = await ebserve(...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /usage|unknown command/, args.join(' '));
    }
  });

  it('names a missing file and a file that is not whole values', async function () {
    const m = await ebserve('compress', '--dtype', 'f32', '--bound', '1e-3', p('nope.f32'), p('o'));
    assert.equal(m.code, 1);
    assert.match(m.stderr, /cannot read .*nope\.f32: no such file/);
    await fs.writeFile(p('odd.f32'), Buffer.alloc(7));
    const o = await ebserve('compress', '--dtype', 'f32', '--bound', '1e-3', p('odd.f32'), p('o'));
    assert.equal(o.code, 2);
    assert.match(o.stderr, /7 bytes, not a whole number of f32 values/);
    const n = await ebserve('inspect', p('w.f32'));
    assert.equal(n.code, 1);
    assert.match(n.stderr, /not an ebserve codec stream.*\[BAD_MAGIC\]/);
  });
});
