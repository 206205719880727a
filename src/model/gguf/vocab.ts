/**
 * Tokenizers ⇄ GGUF's tokenizer.ggml.* metadata.
 *
 * Reading: `model` "gpt2" (byte-level BPE: tokens, merges, `pre` naming the pre-tokenizer) and
 * "llama" (SentencePiece: tokens, scores, token types with <0xXX> byte tokens) become a Hugging
 * Face tokenizer.json that the project's JsonTokenizer runs; merges for SentencePiece come from
 * the scores (every split of a piece into two pieces of the vocabulary, ranked by the piece's
 * score, as transformers' SentencePiece extractor does). A "gpt2" vocabulary of exactly the 256
 * byte symbols in byte order and no merges is the byte tokenizer (token id = byte), and loads as
 * ByteTokenizer.
 *
 * Writing: the byte tokenizer becomes exactly that vocabulary, which llama.cpp's BPE code (as read,
 * not yet run here) tokenizes byte for byte — its pre-tokenizer maps each byte to its symbol, every
 * symbol is a token and no merge ever applies — and detokenizes back through GPT-2's byte table; a byte-level BPE tokenizer.json becomes "gpt2" with its merges and `pre`.
 */
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import { CheckpointError } from '../safetensors.js';
import { ByteTokenizer, JsonTokenizer, type Tokenizer } from '../tokenizer.js';
import { GgufValueType, TokenType, type GgufEntry } from './format.js';

/** GPT-2's byte-level alphabet: the character byte-level BPE writes for each byte. */
export const BYTE_SYMBOLS: readonly string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(printable(b) ? b : 256 + extra++));
  return out;
})();

/** Pre-tokenizer regexes of the BPE families llama.cpp names in tokenizer.ggml.pre. */
const SPLIT_REGEX: Record<string, string> = {
  qwen2: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'llama-bpe': "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
/** `pre` values whose split is GPT-2's own (ByteLevel's built-in regex). */
const GPT2_SPLIT = new Set(['default', 'gpt-2', 'olmo']);

type Meta = ReadonlyMap<string, GgufEntry>;

function strings(meta: Meta, key: string): string[] | undefined {
  const e = meta.get(key);
  return e && e.type === GgufValueType.ARRAY && e.itemType === GgufValueType.STRING ? (e.value as string[]) : undefined;
}

/** Whether the metadata holds the byte tokenizer's vocabulary (see the file comment). */
export function isByteVocab(meta: Meta): boolean {
  const tokens = strings(meta, 'tokenizer.ggml.tokens');
  const merges = strings(meta, 'tokenizer.ggml.merges');
  return meta.get('tokenizer.ggml.model')?.value === 'gpt2' && tokens?.length === 256 && tokens.every((t, i) => t === BYTE_SYMBOLS[i]) && (merges?.length ?? 0) === 0;
}

/** The tokenizer a GGUF file's metadata describes; errors name the key. */
export function ggufTokenizer(meta: Meta, file: string): Tokenizer {
  if (isByteVocab(meta)) return new ByteTokenizer();
  const fail = (key: string, expected: string): never => {
    throw new CheckpointError('BAD_TOKENIZER', `${file}: metadata ${key} must be ${expected}`, { file });
  };
  const model = meta.get('tokenizer.ggml.model')?.value;
  const tokens = strings(meta, 'tokenizer.ggml.tokens') ?? fail('tokenizer.ggml.tokens', 'an array of strings');
  const typesEntry = meta.get('tokenizer.ggml.token_type');
  const types = typesEntry ? (typesEntry.value as number[]) : tokens.map(() => TokenType.NORMAL);
  if (!Array.isArray(types) || types.length !== tokens.length) fail('tokenizer.ggml.token_type', `an array of ${tokens.length} token types`);
  const id = (key: string): number | undefined => {
    const v = meta.get(key)?.value;
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !(v >= 0 && v < tokens.length)) fail(key, `a token id below ${tokens.length}`);
    return v as number;
  };
  const bos = id('tokenizer.ggml.bos_token_id');
  const addBos = (meta.get('tokenizer.ggml.add_bos_token')?.value ?? model === 'llama') === true && bos !== undefined;
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!(t in vocab)) vocab[t] = i;
  });
  const added = tokens
    .map((content, i) => ({ id: i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: types[i] === TokenType.CONTROL }))
    .filter((t) => types[t.id] === TokenType.CONTROL || types[t.id] === TokenType.USER_DEFINED);
  const post = addBos
    ? {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: tokens[bos!], type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: tokens[bos!], type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [tokens[bos!]]: { id: tokens[bos!], ids: [bos], tokens: [tokens[bos!]] } },
      }
    : null;
  let json: object;
  if (model === 'gpt2') {
    const merges = strings(meta, 'tokenizer.ggml.merges') ?? fail('tokenizer.ggml.merges', 'an array of strings (a gpt2 tokenizer has merges)');
    const pre = String(meta.get('tokenizer.ggml.pre')?.value ?? 'default');
    let preTokenizer: object;
    if (GPT2_SPLIT.has(pre)) preTokenizer = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
    else if (SPLIT_REGEX[pre]) {
      preTokenizer = {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: SPLIT_REGEX[pre] }, behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
        ],
      };
    } else return fail('tokenizer.ggml.pre', `one of ${[...GPT2_SPLIT, ...Object.keys(SPLIT_REGEX)].join(', ')} (got ${JSON.stringify(pre)}; that pre-tokenizer is not implemented)`);
    json = {
      version: '1.0',
      added_tokens: added,
      normalizer: null,
      pre_tokenizer: preTokenizer,
      post_processor: post,
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: pre === 'llama-bpe', vocab, merges },
    };
  } else if (model === 'llama') {
    const scoresEntry = meta.get('tokenizer.ggml.scores');
    const scores = scoresEntry ? (scoresEntry.value as number[]) : tokens.map((_, i) => -i);
    if (!Array.isArray(scores) || scores.length !== tokens.length) fail('tokenizer.ggml.scores', `an array of ${tokens.length} numbers`);
    const unk = id('tokenizer.ggml.unknown_token_id') ?? tokens.indexOf('<unk>');
    const spacePrefix = meta.get('tokenizer.ggml.add_space_prefix')?.value !== false;
    json = {
      version: '1.0',
      added_tokens: added,
      normalizer: { type: 'Sequence', normalizers: [...(spacePrefix ? [{ type: 'Prepend', prepend: '▁' }] : []), { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      pre_tokenizer: null,
      post_processor: post,
      decoder: {
        type: 'Sequence',
        decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, ...(spacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : [])],
      },
      model: { type: 'BPE', dropout: null, unk_token: unk >= 0 ? tokens[unk] : null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: sentencePieceMerges(tokens, scores, types, vocab) },
    };
  } else {
    return fail('tokenizer.ggml.model', `"gpt2" or "llama" (got ${JSON.stringify(model)})`);
  }
  try {
    return new JsonTokenizer(new HfTokenizer(json, {}));
  } catch (e) {
    throw new CheckpointError('BAD_TOKENIZER', `${file}: the tokenizer.ggml.* metadata does not make a working tokenizer (${(e as Error).message})`, { file });
  }
}

/** BPE merges equivalent to a SentencePiece vocabulary: each split of a normal piece, by its score. */
function sentencePieceMerges(tokens: string[], scores: number[], types: number[], vocab: Record<string, number>): string[] {
  const found: { a: string; b: string; score: number; ia: number; ib: number }[] = [];
  tokens.forEach((piece, i) => {
    if (types[i] !== TokenType.NORMAL) return;
    const chars = Array.from(piece);
    for (let k = 1; k < chars.length; k++) {
      const a = chars.slice(0, k).join('');
      const b = chars.slice(k).join('');
      if (a in vocab && b in vocab) found.push({ a, b, score: scores[i], ia: vocab[a], ib: vocab[b] });
    }
  });
  found.sort((x, y) => y.score - x.score || x.ia - y.ia || x.ib - y.ib);
  return found.map((m) => `${m.a} ${m.b}`);
}

/** Metadata entries for the writer: key → entry. */
export type VocabEntries = [string, GgufEntry][];

const arr = (itemType: GgufValueType, value: (string | number)[]): GgufEntry => ({ type: GgufValueType.ARRAY, itemType, value });
const u32 = (value: number): GgufEntry => ({ type: GgufValueType.UINT32, value });
const bool = (value: boolean): GgufEntry => ({ type: GgufValueType.BOOL, value });
const str = (value: string): GgufEntry => ({ type: GgufValueType.STRING, value });

/** tokenizer.ggml.* for the byte tokenizer: the 256 byte symbols, no merges, no BOS. */
export function byteVocabEntries(): VocabEntries {
  return [
    ['tokenizer.ggml.model', str('gpt2')],
    ['tokenizer.ggml.pre', str('default')],
    ['tokenizer.ggml.tokens', arr(GgufValueType.STRING, [...BYTE_SYMBOLS])],
    ['tokenizer.ggml.token_type', arr(GgufValueType.INT32, BYTE_SYMBOLS.map(() => TokenType.NORMAL))],
    ['tokenizer.ggml.merges', arr(GgufValueType.STRING, [])],
    ['tokenizer.ggml.add_bos_token', bool(false)],
    ['tokenizer.ggml.add_eos_token', bool(false)],
  ];
}

/**
 * tokenizer.ggml.* for a byte-level BPE tokenizer.json (`tok`), `vocabSize` tokens (ids the
 * tokenizer lacks become [PADn], UNUSED, as convert_hf_to_gguf.py writes them). `special` holds
 * config.json's bos/eos ids and tokenizer_config.json's add_bos_token.
 */
export function bpeVocabEntries(tok: Record<string, any>, vocabSize: number, special: { bos?: number; eos?: number; addBos?: boolean }, file: string): VocabEntries {
  const fail = (what: string): never => {
    throw new CheckpointError('BAD_TOKENIZER', `${file}: ${what}`, { file });
  };
  const model = tok.model ?? {};
  if (model.type !== 'BPE' || model.byte_fallback) fail('only byte-level BPE tokenizers can be written to GGUF (model.type "BPE" without byte_fallback)');
  const pre = bpePreName(tok.pre_tokenizer) ?? fail(`pre_tokenizer ${JSON.stringify(tok.pre_tokenizer).slice(0, 120)} has no llama.cpp name (known: ByteLevel with its regex, or a Split of the qwen2 / llama-bpe regex then ByteLevel)`);
  const tokens: (string | undefined)[] = new Array(vocabSize).fill(undefined);
  const types: number[] = new Array(vocabSize).fill(TokenType.NORMAL);
  for (const [t, i] of Object.entries(model.vocab ?? {}) as [string, number][]) {
    if (!(i >= 0 && i < vocabSize)) fail(`token ${JSON.stringify(t)} has id ${i}, outside the model's vocabulary of ${vocabSize}`);
    tokens[i] = t;
  }
  for (const a of tok.added_tokens ?? []) {
    if (!(a.id >= 0 && a.id < vocabSize)) fail(`added token ${JSON.stringify(a.content)} has id ${a.id}, outside the model's vocabulary of ${vocabSize}`);
    tokens[a.id] = a.content;
    types[a.id] = a.special ? TokenType.CONTROL : TokenType.USER_DEFINED;
  }
  const filled = tokens.map((t, i) => {
    if (t !== undefined) return t;
    types[i] = TokenType.UNUSED;
    return `[PAD${i}]`;
  });
  const merges = (model.merges ?? []).map((m: string | string[]) => (Array.isArray(m) ? m.join(' ') : m));
  const out: VocabEntries = [
    ['tokenizer.ggml.model', str('gpt2')],
    ['tokenizer.ggml.pre', str(pre)],
    ['tokenizer.ggml.tokens', arr(GgufValueType.STRING, filled)],
    ['tokenizer.ggml.token_type', arr(GgufValueType.INT32, types)],
    ['tokenizer.ggml.merges', arr(GgufValueType.STRING, merges)],
  ];
  if (special.bos !== undefined) out.push(['tokenizer.ggml.bos_token_id', u32(special.bos)]);
  if (special.eos !== undefined) out.push(['tokenizer.ggml.eos_token_id', u32(special.eos)]);
  out.push(['tokenizer.ggml.add_bos_token', bool(special.addBos ?? false)]);
  return out;
}

/** llama.cpp's name for a tokenizer.json pre_tokenizer, or undefined when it has none here. */
function bpePreName(p: any): string | undefined {
  if (p?.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  if (p?.type === 'Sequence' && p.pretokenizers?.length === 2) {
    const [split, bl] = p.pretokenizers;
    if (split?.type !== 'Split' || bl?.type !== 'ByteLevel' || bl.use_regex !== false) return undefined;
    return Object.keys(SPLIT_REGEX).find((k) => SPLIT_REGEX[k] === split.pattern?.Regex);
  }
  return undefined;
}
