/**
 * Token scores in OpenAI's two shapes, from what a GenerationSequence reports (TokenLogprob: a
 * token id, its log-probability, its position's most likely tokens).
 *
 * Completions (choices[i].logprobs), four parallel lists over the choice's tokens — the prompt's
 * first when echoing, then the generated ones:
 *
 *   { tokens: ["4", "8"], token_logprobs: [null, -0.8], top_logprobs: [null, {"8": -0.8, "5": -1.2}], text_offset: [0, 1] }
 *
 * top_logprobs holds the N most likely tokens and, as OpenAI documents, always the chosen one
 * (so up to N + 1 entries); the prompt's first token has null for both. text_offset is where each
 * token's text starts in the choice's text as if the prompt came before it (OpenAI's convention:
 * without echo the first offset is the prompt's length), in JavaScript string units; a token that
 * is only part of a character starts where that character starts.
 *
 * Chat (choices[i].logprobs): { content: [{ token, logprob, bytes, top_logprobs: [{ token,
 * logprob, bytes }] }], refusal: null }, exactly top_logprobs entries per token.
 *
 * A token's text is what it decodes to alone; a token that is not whole UTF-8 on its own (one
 * byte of a multi-byte character) is written as "bytes:\xNN…", as OpenAI writes such tokens;
 * `bytes` always holds the exact bytes.
 *
 * @example
 * const w = new LogprobsWriter(tokenizer, 'text', 1, 0);   w.write(generation.promptLogprobs);
 */
import type { TokenLogprob } from '../model/sequence.js';
import type { Tokenizer } from '../model/tokenizer.js';

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[];
  refusal: null;
}

const strict = new TextDecoder('utf-8', { fatal: true });

/** Writes one choice's scores, a piece at a time (a stream's chunks) or all at once; keeps the text offset across pieces. */
export class LogprobsWriter {
  private readonly decoder: ReturnType<Tokenizer['streamDecoder']>;
  private offset: number;
  private readonly names = new Map<number, { text: string; bytes: number[] }>();

  /**
   * `kind` picks the shape, `topN` how many most likely tokens each position lists (chat; for
   * completions the chosen one comes on top), `baseOffset` the first token's text offset.
   */
  constructor(
    private readonly tokenizer: Pick<Tokenizer, 'streamDecoder' | 'tokenBytes'>,
    private readonly kind: 'text' | 'chat',
    private readonly topN: number,
    baseOffset: number,
  ) {
    this.decoder = tokenizer.streamDecoder();
    this.offset = baseOffset;
  }

  /** The next tokens' scores in this writer's shape. */
  write(scores: readonly TokenLogprob[]): CompletionLogprobs | ChatLogprobs {
    if (this.kind === 'chat') {
      return {
        content: scores.map((s) => ({
          ...this.name(s.token),
          logprob: s.logprob ?? 0,
          top_logprobs: (s.top ?? []).slice(0, this.topN).map((t) => ({ ...this.name(t.token), logprob: t.logprob })),
        })),
        refusal: null,
      };
    }
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const s of scores) {
      out.tokens.push(this.name(s.token).token);
      out.token_logprobs.push(s.logprob);
      if (s.logprob === null || s.top === null) {
        out.top_logprobs.push(null);
      } else {
        const top: Record<string, number> = {};
        for (const t of s.top.slice(0, this.topN)) {
          const name = this.name(t.token).token;
          if (!Object.hasOwn(top, name)) top[name] = t.logprob;
        }
        const chosen = this.name(s.token).token;
        if (!Object.hasOwn(top, chosen)) top[chosen] = s.logprob;
        out.top_logprobs.push(top);
      }
      out.text_offset.push(this.offset);
      this.offset += this.decoder.push(s.token).length;
    }
    return out;
  }

  /** A token's text (or "bytes:\xNN…") and its bytes. */
  private name(id: number): { token: string; bytes: number[] } {
    let n = this.names.get(id);
    if (!n) {
      const bytes = this.tokenizer.tokenBytes(id);
      let text: string;
      try {
        text = strict.decode(bytes);
      } catch {
        text = `bytes:${Array.from(bytes, (b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
      }
      n = { text, bytes: Array.from(bytes) };
      this.names.set(id, n);
    }
    return { token: n.text, bytes: n.bytes };
  }
}
