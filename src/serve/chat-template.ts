/**
 * How /v1/chat/completions turns messages into one prompt: the checkpoint's own chat template when
 * its tokenizer_config.json has one, else a plain template.
 *
 * A checkpoint's template (tokenizer_config.json "chat_template": a Jinja string, or a list of
 * {name, template} of which "default" is used) is rendered with @huggingface/jinja, as
 * transformers renders it: `messages` (each content as one string), `add_generation_prompt: true`,
 * the file's `bos_token` and `eos_token` (raise_exception(message) is the renderer's own). It is parsed, and tried
 * on a one-message conversation, when the model loads: a template that does not parse or render
 * fails the load with the file and the reason. A template that refuses a request's messages (its
 * raise_exception: roles that do not alternate, …) is that request's fault, a 400. The prompt it
 * renders is tokenized without the tokenizer's own special tokens (the template writes them), and
 * a reply also ends at the eos_token's text.
 *
 * The plain template, for models without one (the embedded model is a byte-level language model
 * trained on plain text, with no special tokens): one line per message, and the prompt ends where
 * the assistant speaks:
 *
 *   system: You add numbers.
 *   user: 48+27=
 *   assistant:
 *
 * ("developer", OpenAI's newer name for the system role, is written as "system".) The reply is
 * what the model writes after "assistant:", up to the next line that starts a turn: generation
 * stops at "\nuser:" (and at "\nassistant:" or "\nsystem:", should the model carry the dialogue on
 * by itself), on top of the client's own stop strings.
 *
 * @example
 * renderChat([{ role: 'user', content: 'Hi' }])   // 'user: Hi\nassistant:'
 * const t = await loadChatTemplate(dir);  t.source;   // 'tokenizer_config.json' or 'plain'
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { Template } from '@huggingface/jinja';

import type { ChatMessage } from './schemas.js';

/** Where a reply ends: the start of another turn. */
export const CHAT_STOPS = ['\nuser:', '\nassistant:', '\nsystem:'];

/** The prompt for `messages` (see the file comment for the template). */
export function renderChat(messages: readonly ChatMessage[]): string {
  const lines = messages.map((m) => `${m.role === 'developer' ? 'system' : m.role}: ${contentText(m.content)}`);
  return `${lines.join('\n')}\nassistant:`;
}

/** A message's content as text: a string, or its text parts joined. */
function contentText(content: ChatMessage['content']): string {
  return typeof content === 'string' ? content : content.map((p) => p.text).join('');
}

/** The template a model's chat prompts are made with. */
export interface ChatTemplate {
  /** Where it comes from, as /v1/models says: the checkpoint's tokenizer_config.json, a GGUF file's tokenizer.chat_template, or the plain template. */
  readonly source: 'tokenizer_config.json' | 'gguf' | 'plain';
  /** The prompt for `messages`, ending where the assistant speaks; throws a ChatTemplateError when the template refuses them. */
  render(messages: readonly Pick<ChatMessage, 'role' | 'content'>[]): string;
  /** Where every reply ends, besides the client's stop strings. */
  readonly stops: readonly string[];
  /** Whether the tokenizer's own special tokens are added to the rendered prompt (not when the template writes them). */
  readonly addSpecialTokens: boolean;
}

/** The template refused a conversation (its raise_exception, or a failure while rendering). */
export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChatTemplateError';
  }
}

export const PLAIN_CHAT_TEMPLATE: ChatTemplate = { source: 'plain', render: renderChat, stops: CHAT_STOPS, addSpecialTokens: true };

/** A special token as tokenizer_config.json writes it: a string, or {content: string, …}. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/**
 * The template of a Jinja source, with the special tokens it may use. Throws an Error naming
 * `where` when the source does not parse or cannot render a one-message conversation.
 */
export function jinjaChatTemplate(source: string, specials: { bos_token?: string; eos_token?: string }, where: string, from: ChatTemplate['source'] = 'tokenizer_config.json'): ChatTemplate {
  let template: Template;
  try {
    template = new Template(source);
  } catch (e) {
    throw new Error(`${where}: the chat_template does not parse: ${(e as Error).message}`);
  }
  const render = (messages: readonly Pick<ChatMessage, 'role' | 'content'>[]) => {
    try {
      return template.render({
        messages: messages.map((m) => ({ role: m.role, content: contentText(m.content) })),
        add_generation_prompt: true,
        bos_token: specials.bos_token ?? '',
        eos_token: specials.eos_token ?? '',
        // raise_exception(message) is one of @huggingface/jinja's own globals: it throws an Error.
      });
    } catch (e) {
      throw e instanceof ChatTemplateError ? e : new ChatTemplateError((e as Error).message);
    }
  };
  try {
    render([{ role: 'user', content: 'Hello' }]);
  } catch (e) {
    throw new Error(`${where}: the chat_template fails on a one-message conversation: ${(e as Error).message}`);
  }
  return { source: from, render, stops: specials.eos_token ? [specials.eos_token] : [], addSpecialTokens: false };
}

/**
 * The chat template a GGUF file carries (metadata tokenizer.chat_template, with the texts of its
 * tokenizer.ggml.bos_token_id and eos_token_id as bos_token and eos_token), or the plain template
 * when it has none. Throws an Error naming the file and key when the value is not a string, does
 * not parse, or does not render.
 */
export function ggufChatTemplate(file: string, metadata: ReadonlyMap<string, { value: unknown }>): ChatTemplate {
  const entry = metadata.get('tokenizer.chat_template');
  if (entry === undefined) return PLAIN_CHAT_TEMPLATE;
  const where = `${file}: metadata tokenizer.chat_template`;
  if (typeof entry.value !== 'string') throw new Error(`${where} must be a string, got ${JSON.stringify(String(entry.value)).slice(0, 60)}`);
  const tokens = metadata.get('tokenizer.ggml.tokens')?.value;
  const text = (key: string) => {
    const id = metadata.get(key)?.value;
    return Array.isArray(tokens) && typeof id === 'number' && typeof tokens[id] === 'string' ? (tokens[id] as string) : undefined;
  };
  return jinjaChatTemplate(entry.value, { bos_token: text('tokenizer.ggml.bos_token_id'), eos_token: text('tokenizer.ggml.eos_token_id') }, where, 'gguf');
}

/**
 * The chat template of the checkpoint in `dir`: its tokenizer_config.json's chat_template, or the
 * plain template when there is no such file or it has none. Throws an Error naming the file when
 * the file is not JSON or the template is not a string (or a list of named ones), does not
 * parse, or does not render.
 */
export async function loadChatTemplate(dir: string): Promise<ChatTemplate> {
  const file = path.join(dir, 'tokenizer_config.json');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return PLAIN_CHAT_TEMPLATE;
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  let source = cfg?.chat_template;
  if (source === undefined || source === null) return PLAIN_CHAT_TEMPLATE;
  if (Array.isArray(source)) {
    const named = source as { name?: unknown; template?: unknown }[];
    source = (named.find((t) => t?.name === 'default') ?? named[0])?.template;
  }
  if (typeof source !== 'string') throw new Error(`${file}: chat_template must be a string (or a list of {name, template}), got ${JSON.stringify(cfg.chat_template).slice(0, 80)}`);
  return jinjaChatTemplate(source, { bos_token: tokenText(cfg.bos_token), eos_token: tokenText(cfg.eos_token) }, file);
}
