// `ebserve doctor`, run as a user runs it: it reports what the addon itself says (SIMD level,
// threads, CUDA built or not and why it is unusable), and the TensorFlow.js backend with its reason.
import assert from 'node:assert/strict';

import { native } from '../src/codec/native.js';
import { ebserve } from './helpers/ebserve.js';

describe('ebserve doctor', function () {
  it('reports SIMD, CUDA (or the runtime\'s reason it cannot be used) and the backend, as JSON', async function () {
    const r = await ebserve('doctor', '--json');
    assert.equal(r.code, 0, r.stderr);
    const d = JSON.parse(r.stdout) as { cpu: { simd: string; threads: number; fused_decoder: string; int_dot: string }; cuda: { built: boolean; available: boolean; error: string | null }; tensorflow_backend: { name: string; reason: string } };
    const info = native.info();
    assert.equal(d.cpu.simd, info.simd);
    assert.equal(d.cpu.fused_decoder, info.fusedDecoder);
    assert.equal(d.cpu.int_dot, info.intDot);
    assert.match(d.cpu.int_dot, /^(vnni|generic)$/);
    assert.equal(d.cpu.threads, info.threads);
    assert.equal(d.cuda.built, info.cuda.built);
    assert.equal(d.cuda.available, info.cuda.available);
    if (!d.cuda.available) assert.ok(d.cuda.error && d.cuda.error.length > 0, 'says why CUDA is unusable');
    assert.match(d.tensorflow_backend.name, /^(tensorflow|wasm|cpu)$/);
    assert.ok(d.tensorflow_backend.reason.length > 0);
  });

  it('prints the same as lines of text', async function () {
    const r = await ebserve('doctor');
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes(native.info().simd));
    assert.ok(r.stdout.includes(`integer dot ${native.info().intDot}`));
    assert.match(r.stdout, /^cuda {8}/m);
    assert.match(r.stdout, /^tensorflow {2}(tensorflow|wasm|cpu) \(/m);
  });
});
