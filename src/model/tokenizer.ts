/**
 * Tokenizers: raw bytes (token id = byte value; what the embedded model uses) or a Hugging Face
 * tokenizer.json through @huggingface/tokenizers (pure JS). Decoding is incremental so a stream
 * never emits half of a multi-byte character.
 *
 * @example
 * const tok = await loadTokenizer(dir, config);  const ids = tok.encode('48+27=');
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import type { ModelConfig } from './types.js';

export interface Tokenizer {
  readonly kind: 'bytes' | 'tokenizer.json';
  /** Token ids of `text`; `addSpecialTokens: false` leaves out what the tokenizer's post-processor adds (a BOS, …). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[]): string;
  /** The bytes one token stands for (what OpenAI's logprobs call a token's bytes). */
  tokenBytes(id: number): Uint8Array;
  /** A decoder for a stream of ids: push(id) returns the text that became complete. */
  streamDecoder(): { push(id: number): string; flush(): string };
}

/** Token id = byte value of the UTF-8 text. */
export class ByteTokenizer implements Tokenizer {
  readonly kind = 'bytes';
  encode(text: string): number[] {
    return Array.from(Buffer.from(text, 'utf8'));
  }
  decode(ids: number[]): string {
    return Buffer.from(ids).toString('utf8');
  }
  tokenBytes(id: number): Uint8Array {
    return Uint8Array.of(id);
  }
  streamDecoder() {
    const dec = new TextDecoder('utf-8');
    return {
      push: (id: number) => dec.decode(Uint8Array.of(id), { stream: true }),
      flush: () => dec.decode(),
    };
  }
}

/** A tokenizer.json tokenizer. */
export class JsonTokenizer implements Tokenizer {
  readonly kind = 'tokenizer.json';
  constructor(private readonly tok: HfTokenizer) {}
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }
  decode(ids: number[]): string {
    return this.tok.decode(ids);
  }
  tokenBytes(id: number): Uint8Array {
    const text = this.decode([id]);
    if (!text.includes('\uFFFD')) return new Uint8Array(Buffer.from(text, 'utf8'));
    // Part of a character: a byte-level BPE token's string maps back to its bytes (GPT-2's table).
    const piece = this.tok.id_to_token(id) ?? '';
    const bytes = Array.from(piece, (ch: string) => UNICODE_TO_BYTE.get(ch));
    return bytes.every((b) => b !== undefined) ? Uint8Array.from(bytes as number[]) : new Uint8Array(Buffer.from(text, 'utf8'));
  }
  streamDecoder() {
    // Decode the whole run each time and emit what grew, holding back a trailing U+FFFD (an
    // incomplete character the next token may finish).
    const ids: number[] = [];
    let emitted = 0;
    const step = (final: boolean) => {
      const text = this.decode(ids);
      const ready = final || !text.endsWith('\uFFFD') ? text.length : text.length - 1;
      const out = text.slice(emitted, Math.max(emitted, ready));
      emitted = Math.max(emitted, ready);
      return out;
    };
    return {
      push: (id: number) => {
        ids.push(id);
        return step(false);
      },
      flush: () => step(true),
    };
  }
}

/** GPT-2's byte-level alphabet, inverted: the character a byte-level BPE writes for each byte → the byte. */
const UNICODE_TO_BYTE: ReadonlyMap<string, number> = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const m = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) m.set(String.fromCodePoint(printable(b) ? b : 256 + extra++), b);
  return m;
})();

/** The tokenizer a checkpoint folder declares. */
export async function loadTokenizer(dir: string, config: ModelConfig): Promise<Tokenizer> {
  if (config.tokenizer === 'bytes') return new ByteTokenizer();
  const file = path.join(dir, 'tokenizer.json');
  let json: unknown;
  let cfg: unknown = {};
  try {
    json = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`cannot read the tokenizer ${file}: ${(e as Error).message}`);
  }
  try {
    cfg = JSON.parse(await fs.readFile(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  } catch {
    // tokenizer_config.json is optional: it only adds special-token metadata.
  }
  return new JsonTokenizer(new HfTokenizer(json as object, cfg as object));
}
