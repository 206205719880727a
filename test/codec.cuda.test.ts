// CUDA: the kernels compile wherever nvcc is (CI checks it through this test), and on a machine
// with a GPU they meet the same conformance suite as every other codec implementation.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

import { compress } from '../src/codec/index.js';
import { native } from '../src/codec/native.js';
import { runCodecConformance } from './codec/conformance.js';
import { gaussian } from './codec/data.js';
import { cudaKernels } from './codec/native-impls.js';

function nvccFound(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v nvcc'], { stdio: 'ignore' });
    return true;
  } catch {
    return existsSync('/usr/local/cuda/bin/nvcc');
  }
}

describe('CUDA build', function () {
  it('links the CUDA codec into the addon when nvcc is on this machine', function () {
    const probe = native.info().cuda;
    assert.equal(probe.built, nvccFound(), JSON.stringify(probe));
    if (probe.built) {
      assert.equal(typeof native.cudaCompress, 'function');
      assert.equal(typeof native.cudaDecompress, 'function');
    }
  });

  it('reports why CUDA is unavailable instead of failing, and the CPU codec still works', function () {
    const probe = native.info().cuda;
    if (probe.available) this.skip();
    assert.ok(probe.error && probe.error.length > 0, 'no reason given');
    if (probe.built) {
      const x = gaussian(1000, 0.02);
      assert.throws(() => native.cudaCompress!(x, 0, 1e-3, 0, [0]), /no usable CUDA device/);
    }
    assert.ok(compress(gaussian(1000, 0.02), { bound: 1e-3 }).byteLength > 0);
  });
});

runCodecConformance(cudaKernels);
