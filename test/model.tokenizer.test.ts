// Tokenizers: a Hugging Face tokenizer.json (a byte-level BPE written here, GPT-2's byte-to-unicode
// table and three merges) loads through @huggingface/tokenizers, applies its merges, round-trips
// any UTF-8 text, and streams without ever emitting half a character; the byte tokenizer too.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { parseConfig } from '../src/model/config.js';
import { ByteTokenizer, loadTokenizer, type Tokenizer } from '../src/model/tokenizer.js';

/** GPT-2's byte → printable character table (byte-level BPE vocabularies are written in it). */
function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const out: string[] = new Array(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + shifted++);
  return out;
}

function byteLevelBpe(): object {
  const u = bytesToUnicode();
  const vocab: Record<string, number> = {};
  u.forEach((ch, b) => (vocab[ch] = b));
  const merges = [['t', 'h'], ['th', 'e'], [u[32], 'th']];
  merges.forEach(([a, b], i) => (vocab[a + b] = 256 + i));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: merges.map((m) => m.join(' ')) },
  };
}

function streamed(tok: Tokenizer, ids: number[]): string[] {
  const dec = tok.streamDecoder();
  const pieces = ids.map((id) => dec.push(id));
  pieces.push(dec.flush());
  return pieces;
}

const TEXT = 'the theme — é, 🐋 and thé';

describe('tokenizers', function () {
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-tok-'));
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteLevelBpe()));
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const config = () =>
    parseConfig({ model_type: 'mixtral', vocab_size: 259, hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 8, num_local_experts: 2, num_experts_per_tok: 1, max_position_embeddings: 32, rms_norm_eps: 1e-5, rope_theta: 1e4 }, path.join(dir, 'config.json'));

  it('loads tokenizer.json, applies its merges and round-trips UTF-8 text', async function () {
    const tok = await loadTokenizer(dir, config());
    assert.equal(tok.kind, 'tokenizer.json');
    const ids = tok.encode(TEXT);
    assert.ok(ids.includes(257), `'the' merged into one token: ${ids}`);
    assert.ok(ids.length < Buffer.byteLength(TEXT), 'fewer tokens than bytes');
    assert.equal(tok.decode(ids), TEXT);
  });

  it('streams a tokenizer.json decode without emitting half a character', async function () {
    const tok = await loadTokenizer(dir, config());
    const pieces = streamed(tok, tok.encode(TEXT));
    assert.equal(pieces.join(''), TEXT);
    for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)}`);
  });

  it('streams bytes the same way: a multi-byte character appears whole, once its last byte arrives', function () {
    const tok = new ByteTokenizer();
    const ids = tok.encode(TEXT);
    assert.equal(ids.length, Buffer.byteLength(TEXT));
    const pieces = streamed(tok, ids);
    assert.equal(pieces.join(''), TEXT);
    const whale = Buffer.byteLength('the theme — é, ');
    assert.deepEqual(pieces.slice(whale, whale + 4), ['', '', '', '🐋']);
  });

  it('names the file when tokenizer.json is not valid JSON', async function () {
    const bad = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-tok-bad-'));
    try {
      fs.writeFileSync(path.join(bad, 'tokenizer.json'), '{"model": ');
      await assert.rejects(loadTokenizer(bad, config()), (e: Error) => e.message.includes(path.join(bad, 'tokenizer.json')));
    } finally {
      fs.rmSync(bad, { recursive: true, force: true });
    }
  });
});
