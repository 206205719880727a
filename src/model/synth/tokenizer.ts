/**
 * A tokenizer.json of exactly the model's vocabulary size, built here, so a synthetic folder loads
 * and serves like a real one: a byte-level BPE in GPT-2's scheme (the ByteLevel pre-tokenizer and
 * decoder of Hugging Face tokenizers, which OLMoE's and Qwen3's own tokenizers use too). Any text
 * encodes (the 256 byte symbols are in the vocabulary) and every id decodes.
 *
 * The vocabulary: the 256 byte symbols; then merges learned on the calibration text (classic BPE:
 * repeatedly merge the most frequent adjacent pair, ties broken by the pair's text), so that text
 * tokenizes into word-like pieces as with a trained tokenizer; then, to fill the vocabulary to its
 * exact size, systematic merges — every pair of byte symbols, then pair + byte — which real text
 * rarely hits but which are valid tokens. The embedding rows of the filler ids are as random as
 * any other. No special tokens: the configs' bos/eos/pad ids are ordinary tokens here.
 *
 * @example
 * const json = buildTokenizerJson(50304, corpusText);   // JSON.stringify(json) → tokenizer.json
 */

/** GPT-2's map from byte to a printable unicode symbol (bytes_to_unicode). */
export function byteSymbols(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const symbols: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    symbols[b] = printable.includes(b) ? String.fromCodePoint(b) : String.fromCodePoint(256 + extra++);
  }
  return symbols;
}

/** GPT-2's pre-tokenization pattern (the ByteLevel pre-tokenizer's use_regex). */
const PIECES = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** At most this many merges are learned from the text (the rest of the vocabulary is filler). */
const MAX_LEARNED_MERGES = 4000;

export interface TokenizerJson {
  version: string;
  [key: string]: unknown;
}

/** A byte-level BPE tokenizer.json with exactly `vocabSize` tokens (≥ 256), merges learned on `text`. */
export function buildTokenizerJson(vocabSize: number, text: string): TokenizerJson {
  if (!Number.isInteger(vocabSize) || vocabSize < 256) throw new RangeError(`a byte-level vocabulary needs at least 256 tokens, got ${vocabSize}`);
  const symbols = byteSymbols();
  const vocab = new Map<string, number>();
  symbols.forEach((s) => vocab.set(s, vocab.size));
  const merges: string[] = [];
  const add = (a: string, b: string): boolean => {
    if (vocab.size >= vocabSize || vocab.has(a + b)) return false;
    vocab.set(a + b, vocab.size);
    merges.push(`${a} ${b}`);
    return true;
  };

  for (const [a, b] of learnMerges(text, symbols, Math.min(MAX_LEARNED_MERGES, vocabSize - 256))) add(a, b);
  // Filler: byte pairs, then (byte pair + byte), in a fixed order, until the vocabulary is full.
  const pairs: string[] = [];
  for (const a of symbols) {
    for (const b of symbols) {
      if (vocab.size >= vocabSize) break;
      if (add(a, b)) pairs.push(a + b);
    }
  }
  for (const p of pairs) {
    for (const b of symbols) {
      if (vocab.size >= vocabSize) break;
      add(p, b);
    }
  }
  if (vocab.size !== vocabSize) throw new Error(`internal: built ${vocab.size} tokens for a vocabulary of ${vocabSize}`);

  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
}

/** Classic BPE training on `text`'s pieces: up to `limit` merges, each of a pair seen at least twice. */
function learnMerges(text: string, symbols: string[], limit: number): [string, string][] {
  // Distinct pieces with their counts, each as its byte symbols.
  const counts = new Map<string, number>();
  for (const m of text.matchAll(PIECES)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
  const words = [...counts].map(([piece, n]) => ({ syms: Array.from(Buffer.from(piece, 'utf8'), (b) => symbols[b]), n }));
  const out: [string, string][] = [];
  while (out.length < limit) {
    const pairCounts = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        const key = `${w.syms[i]}\u0000${w.syms[i + 1]}`;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + w.n);
      }
    }
    let best = '';
    let bestCount = 1;
    for (const [key, n] of pairCounts) if (n > bestCount || (n === bestCount && n > 1 && key < best)) [best, bestCount] = [key, n];
    if (bestCount < 2) break;
    const [a, b] = best.split('\u0000');
    out.push([a, b]);
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        if (w.syms[i] === a && w.syms[i + 1] === b) w.syms.splice(i, 2, a + b);
      }
    }
  }
  return out;
}
