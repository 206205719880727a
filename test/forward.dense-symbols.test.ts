// The native forward with its attention projections held as 8-bit symbols
// (src/model/native-forward.ts DenseSymbols): each tensor at its own tight bound (denseBound). The
// symbol product multiplies the decoded weights exactly, so the forward's logits are bit for bit
// those of a forward given the decoded tensors; with 8-bit activations they stay close, and a
// token's results still do not depend on its batch.
import assert from 'node:assert/strict';

import { compress, decompress } from '../src/codec/index.js';
import { KvCache } from '../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import { denseTensorNames } from '../src/model/names.js';
import { denseBound, NativeForward } from '../src/model/native-forward.js';
import { rotaryTables } from '../src/model/transformer.js';
import { gaussian } from './codec/data.js';

const PROMPT = 'It is a truth universally acknowledged, that a single';

describe('the native forward with dense weights as symbols', function () {
  this.timeout(120_000);
  let plain: LoadedModel;
  before(async () => {
    plain = await loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: {} });
  });
  after(() => plain?.dispose());

  const logitsOf = async (forward: NativeForward, tokens: number[]) =>
    (await forward.step([{ tokens, cache: KvCache.forModel(plain.checkpoint.config), allLogits: true }], plain.engine))[0];

  const read = (name: string) => plain.checkpoint.readTensor(name);
  /** What the symbols hold: each tensor bitsOf names compressed within its bound for those bits and decoded; the rest as stored. */
  const decodedRead = (bitsOf: (name: string) => 0 | 4 | 8) => (name: string) => {
    const m = read(name);
    const bits = bitsOf(name);
    return bits ? (decompress(compress(m, { bound: denseBound(m, bits) })) as Float32Array) : m;
  };

  const forwardWith = (read: (name: string) => Float32Array, dense?: { int8Activations?: boolean; lmHead?: boolean; bits?: 4 | 8 }) => {
    const c = plain.checkpoint.config;
    return new NativeForward(c, read, denseTensorNames(c), rotaryTables(c.headDim, c.maxPositions, c.ropeTheta), 0, dense);
  };

  it('gives bit for bit the logits of a forward given the decoded tensors, in fewer bytes', async function () {
    const c = plain.checkpoint.config;
    const names = denseTensorNames(c);
    const projections = new Set(names.layers.flatMap((n) => [n.q, n.k, n.v, n.o]));
    const decoded = decodedRead((name) => (projections.has(name) ? 8 : 0));
    const symbols = forwardWith(read, {});
    const reference = forwardWith(decoded);
    const tokens = plain.tokenizer.encode(PROMPT);
    const a = await logitsOf(symbols, tokens);
    const b = await logitsOf(reference, tokens);
    assert.ok(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength)), 'the logits differ');
    const stored = forwardWith(read);
    assert.ok(symbols.heldBytes < stored.heldBytes, `symbols hold ${symbols.heldBytes} bytes, bf16 ${stored.heldBytes}`);
    assert.match(symbols.denseForm, /8-bit symbols/);
    // Against the stored weights: close, and the greedy tokens of every position mostly the same.
    const s = await logitsOf(stored, tokens);
    const V = c.vocabSize;
    let same = 0;
    for (let t = 0; t < tokens.length; t++) {
      const arg = (l: Float32Array) => l.subarray(t * V, (t + 1) * V).reduce((best, v, i, row) => (v > row[best] ? i : best), 0);
      if (arg(a) === arg(s)) same++;
    }
    assert.ok(same >= tokens.length - 1, `${same} of ${tokens.length} positions keep their greedy token`);
    assert.match(symbols.denseForm, /LM head as stored/);
  });

  it('holds the LM head as symbols too with lmHead, bit for bit the decoded head\'s logits, and records every tensor', async function () {
    const c = plain.checkpoint.config;
    const names = denseTensorNames(c);
    const symbolic = new Set([...names.layers.flatMap((n) => [n.q, n.k, n.v, n.o]), names.lmHead]);
    const decoded = decodedRead((name) => (symbolic.has(name) ? 8 : 0));
    const withHead = forwardWith(read, { lmHead: true });
    const tokens = plain.tokenizer.encode(PROMPT);
    const a = await logitsOf(withHead, tokens);
    const b = await logitsOf(forwardWith(decoded), tokens);
    assert.ok(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength)), 'the logits differ');
    assert.match(withHead.denseForm, /attention projections and LM head as 8-bit symbols/);
    // Every tensor once, with its role, form and (for symbols) its bound; bytes add up to heldBytes.
    const head = withHead.tensors.find((t) => t.name === names.lmHead)!;
    assert.equal(head.role, 'lm_head');
    assert.equal(head.form, 'symbols');
    assert.equal(head.bound, denseBound(read(names.lmHead)));
    assert.equal(withHead.tensors.filter((t) => t.role === 'attention' && t.form === 'symbols').length, 4 * c.numLayers);
    assert.deepEqual(new Set(withHead.tensors.filter((t) => t.form !== 'symbols').map((t) => t.role)), new Set(['embeddings', 'norm', 'router']));
    const rotary = 2 * c.maxPositions * c.headDim * 4;
    assert.equal(withHead.tensors.reduce((n, t) => n + t.bytes, rotary), withHead.heldBytes);
    assert.ok(withHead.heldBytes < forwardWith(read, {}).heldBytes);
  });

  it('holds the attention projections as 4-bit symbols with bits 4 (the LM head at 8): bit for bit the decoded tensors\' logits, in under 0.6 of the 8-bit bytes', async function () {
    const c = plain.checkpoint.config;
    const names = denseTensorNames(c);
    const attention = new Set(names.layers.flatMap((n) => [n.q, n.k, n.v, n.o]));
    const decoded = decodedRead((name) => (attention.has(name) ? 4 : name === names.lmHead ? 8 : 0));
    const four = forwardWith(read, { lmHead: true, bits: 4 });
    const tokens = plain.tokenizer.encode(PROMPT);
    const a = await logitsOf(four, tokens);
    const b = await logitsOf(forwardWith(decoded), tokens);
    assert.ok(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength)), 'the logits differ');
    assert.match(four.denseForm, /attention projections as 4-bit symbols and LM head as 8-bit symbols/);
    const head = four.tensors.find((t) => t.name === names.lmHead)!;
    assert.deepEqual([head.bits, head.bound], [8, denseBound(read(names.lmHead))]);
    const q = four.tensors.find((t) => t.name === names.layers[0].q)!;
    assert.deepEqual([q.bits, q.bound], [4, denseBound(read(names.layers[0].q), 4)]);
    const bytes = (f: NativeForward) => f.tensors.filter((t) => t.role === 'attention' && t.form === 'symbols').reduce((n, t) => n + t.bytes, 0);
    const eight = forwardWith(read, { lmHead: true });
    assert.ok(bytes(four) < 0.6 * bytes(eight), `4-bit attention symbols hold ${bytes(four)} bytes, 8-bit ${bytes(eight)}`);
  });

  it('with 8-bit activations: close to the f32 product, and each sequence the same alone as in a batch', async function () {
    const c = plain.checkpoint.config;
    const int8 = forwardWith(read, { int8Activations: true });
    const f32 = forwardWith(read, {});
    const tokens = plain.tokenizer.encode(PROMPT);
    const a = await logitsOf(int8, tokens);
    const b = await logitsOf(f32, tokens);
    let err = 0;
    let norm = 0;
    for (let i = 0; i < a.length; i++) {
      err += (a[i] - b[i]) ** 2;
      norm += b[i] ** 2;
    }
    assert.ok(Math.sqrt(err / norm) < 2e-2, `relative error ${Math.sqrt(err / norm)}`);
    // Alone and beside another sequence at another position.
    const other = plain.tokenizer.encode('Call me Ishmael.');
    const alone = await logitsOf(int8, tokens);
    const [together] = await int8.step(
      [
        { tokens, cache: KvCache.forModel(c), allLogits: true },
        { tokens: other, cache: KvCache.forModel(c), allLogits: true },
      ],
      plain.engine,
    );
    assert.deepEqual(together, alone);
  });

  it('takes the bound of a tensor\'s 1 − 1/256 quantile of |w| over 254 (14 at 4 bits)', function () {
    const m = gaussian(1 << 18, 0.02, 5);
    const eb = denseBound(m);
    // N(0, σ): |w| passes 2.89σ with probability 1/256.
    assert.ok(Math.abs(eb / ((2.89 * 0.02) / 254) - 1) < 0.05, `eb ${eb}`);
    assert.equal(denseBound(new Float32Array(64)), 1, 'a tensor of zeros: any bound holds it');
    const sparse = new Float32Array(1 << 12);
    sparse[5] = -0.3;
    assert.equal(denseBound(sparse), Math.fround(0.3) / 254, 'nearly all zeros: the largest |w| over 254');
    // At 4 bits over 14, the largest |n| a nibble holds.
    assert.ok(Math.abs(denseBound(m, 4) / ((2.89 * 0.02) / 14) - 1) < 0.05, `eb ${denseBound(m, 4)}`);
  });
});
