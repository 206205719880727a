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
  encode(text: string): number[];
  decode(ids: number[]): string;
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
  encode(text: string): number[] {
    return this.tok.encode(text).ids;
  }
  decode(ids: number[]): string {
    return this.tok.decode(ids);
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
