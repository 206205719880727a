// The precision ladder: what it costs, and that its rungs travel and decode separately.
import assert from 'node:assert/strict';

import {
  CodecError,
  compress,
  compressLadder,
  decompress,
  decompressRungs,
  inspect,
  ladderBounds,
  ladderCuts,
  splitRungs,
} from '../src/codec/index.js';
import { gaussian } from './codec/data.js';

describe('precision ladder', function () {
  const x = gaussian(1 << 20, 0.02, 11);

  for (const finest of [1.25e-4, 1e-3]) {
    it(`costs at most 1.10× a direct stream at every rung (N(0, 0.02), finest ${finest}, 4 rungs)`, function () {
      const bounds = ladderBounds(finest, 4);
      const info = inspect(compressLadder(x, { bounds }));
      for (let k = 0; k < bounds.length; k++) {
        const direct = compress(x, { bound: bounds[k] }).byteLength;
        const ratio = info.rungs[k].cumulativeBytes / direct;
        assert.ok(ratio <= 1.1, `rung ${k} (bound ${bounds[k]}): ${info.rungs[k].cumulativeBytes} bytes vs ${direct} direct = ${ratio.toFixed(4)}×`);
      }
    });
  }

  it('decodes rungs 0..k handed over separately exactly as from the whole stream', function () {
    const stream = compressLadder(x.subarray(0, 100_000), { bounds: ladderBounds(1e-4, 3) });
    const { head, rungs } = splitRungs(stream);
    assert.equal(rungs.length, 3);
    for (let k = 0; k < 3; k++) {
      const whole = decompress(stream, { rung: k });
      // Copies, as a store that fetched them one by one would hold them.
      const parts = rungs.slice(0, k + 1).map((r) => Buffer.from(r));
      assert.deepEqual(decompressRungs(Buffer.from(head), parts), whole, `rung ${k}`);
    }
  });

  it('gets looser rung by rung and exact at the finest', function () {
    const stream = compressLadder(x.subarray(0, 50_000), { bounds: ladderBounds(1e-4, 4) });
    const info = inspect(stream);
    let prevErr = Infinity;
    for (let k = 0; k < 4; k++) {
      const out = decompress(stream, { rung: k }) as Float32Array;
      let err = 0;
      for (let i = 0; i < out.length; i++) err = Math.max(err, Math.abs(out[i] - x[i]));
      assert.ok(err <= info.rungs[k].bound);
      assert.ok(err < prevErr, `rung ${k} error ${err} not below rung ${k - 1}'s ${prevErr}`);
      // The bound is used, not just met from far below: a loose rung is really loose.
      assert.ok(err > info.rungs[k].bound * 0.9, `rung ${k} error ${err} far under bound ${info.rungs[k].bound}`);
      prevErr = err;
    }
  });

  it('refuses rungs that are not powers of two apart, or not loosest first', function () {
    for (const bounds of [[3e-3, 1e-3], [1e-3, 2e-3], [1e-3, 1e-3], [], [4e-3, 2e-3, 2e-3]]) {
      assert.throws(() => ladderCuts(bounds), (e: unknown) => e instanceof CodecError && e.code === 'BAD_LADDER', JSON.stringify(bounds));
    }
    assert.deepEqual(ladderCuts(ladderBounds(1e-3, 4)), [3, 2, 1, 0]);
  });

  it('refuses to decode a rung that was not handed over', function () {
    const { head, rungs } = splitRungs(compressLadder(x.subarray(0, 1000), { bounds: ladderBounds(1e-3, 3) }));
    assert.throws(() => decompressRungs(head, rungs.slice(0, 1), { rung: 2 }), (e: unknown) => e instanceof CodecError && e.code === 'BAD_RUNGS');
  });
});
