/**
 * What a client may send to POST /v1/completions and /v1/chat/completions, as zod schemas, and
 * the one function that turns a body into a typed request or a 400 naming the field.
 *
 * The fields follow OpenAI's API, scoring included: logprobs (top-N, 0..20) and echo on
 * completions — with echo, max_tokens may be 0 and only the prompt is scored, as evaluation
 * harnesses ask — logprobs/top_logprobs on chat, logit_bias (token id → [-100, 100]) and the
 * presence/frequency penalties ([-2, 2]). A completions prompt is a string, a list of strings,
 * a list of token ids or a list of such lists (each prompt brings n choices). Fields this server
 * does not implement are accepted only at their neutral value (best_of 1, no suffix, no tools),
 * because answering as if they had been honoured would be wrong; fields that change nothing about the output (user,
 * metadata, …) and unknown fields are ignored, as OpenAI-compatible servers do, so that existing
 * clients work unchanged. Limits that depend on the model (the context) or the server (how many
 * choices one request may ask for) are parameters.
 *
 * @example
 * const schemas = requestSchemas({ contextTokens: 256, maxChoices: 8 });
 * const req = parseRequest(schemas.completion, { prompt: '48+27=', max_tokens: 4 });   // or throws a 400
 */
import { z } from 'zod';

import { badRequest } from './errors.js';

/** At most this many stop strings, as OpenAI allows. */
export const MAX_STOP_STRINGS = 4;

/** At most this many top log-probabilities per position, as OpenAI allows. */
export const MAX_LOGPROBS = 20;

/**
 * At most this many choices (n) per request. Each choice is a sequence of its own in the batch,
 * and a request's choices join the batch together, so a server also caps n at its --max-batch.
 */
export const MAX_CHOICES = 8;

/** A message for a field that is missing or of the wrong type. */
const typed = (name: string, what: string) => ({
  error: (issue: { input?: unknown }) => (issue.input === undefined ? `${name} is required (${what})` : `${name} must be ${what}`),
});

/** A field accepted only at its neutral value: `ok` says which values are neutral. */
const neutral = (name: string, ok: (v: unknown) => boolean, neutralText: string) =>
  z
    .unknown()
    .refine((v) => v === null || ok(v), { error: `${name} is not supported by this server (only ${neutralText})` })
    .optional();

const penalty = (name: string) =>
  z.number(typed(name, 'a number')).min(-2, { error: `${name} must be between -2 and 2` }).max(2, { error: `${name} must be between -2 and 2` }).nullish();

const topN = (name: string) =>
  z
    .number(typed(name, `a whole number between 0 and ${MAX_LOGPROBS}`))
    .int({ error: `${name} must be a whole number between 0 and ${MAX_LOGPROBS}` })
    .min(0, { error: `${name} must be between 0 and ${MAX_LOGPROBS}` })
    .max(MAX_LOGPROBS, { error: `${name} must be at most ${MAX_LOGPROBS}` })
    .nullish();

/** A completions prompt: one text, texts, one list of token ids, or lists of them. */
const promptField = () => {
  const text = z.string().min(1, { error: 'prompt must not be empty' });
  const id = z.number().int({ error: 'prompt token ids must be whole numbers' }).min(0, { error: 'prompt token ids must be ≥ 0' });
  const ids = z.array(id).min(1, { error: 'prompt must not be an empty list of token ids' });
  const message = (i: { input?: unknown }) =>
    i.input === undefined ? 'prompt is required (a string)' : 'prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids';
  return z.union([text, z.array(text).min(1, { error: 'prompt must not be an empty list' }), ids, z.array(ids).min(1, { error: 'prompt must not be an empty list' })], { error: message });
};

/** A completions prompt as a list of prompts, each text or token ids. */
export function promptList(prompt: string | string[] | number[] | number[][]): (string | number[])[] {
  if (typeof prompt === 'string') return [prompt];
  if (prompt.length > 0 && typeof prompt[0] === 'number') return [prompt as number[]];
  return prompt as (string | number[])[];
}

const maxTokensField = (name: string, contextTokens: number, min = 1) =>
  z
    .number(typed(name, 'a whole number'))
    .int({ error: `${name} must be a whole number` })
    .min(min, { error: `${name} must be at least ${min}` })
    .max(contextTokens, { error: `${name} must be at most ${contextTokens}, the model's context` })
    .nullish();

function samplingFields(contextTokens: number, maxChoices: number) {
  const maxTokens = (name: string) => maxTokensField(name, contextTokens);
  return {
    model: z.string(typed('model', 'a string')).nullish(),
    max_tokens: maxTokens('max_tokens'),
    temperature: z.number(typed('temperature', 'a number')).min(0, { error: 'temperature must be between 0 and 2' }).max(2, { error: 'temperature must be between 0 and 2' }).nullish(),
    top_p: z.number(typed('top_p', 'a number')).gt(0, { error: 'top_p must be above 0 and at most 1' }).max(1, { error: 'top_p must be above 0 and at most 1' }).nullish(),
    // Any whole number: the sampler uses its low 32 bits.
    seed: z.number(typed('seed', 'a whole number')).int({ error: 'seed must be a whole number' }).nullish(),
    stop: z
      .union([z.string(), z.array(z.string()).max(MAX_STOP_STRINGS)], { error: `stop must be a string or a list of at most ${MAX_STOP_STRINGS} strings` })
      .nullish(),
    stream: z.boolean(typed('stream', 'true or false')).nullish(),
    stream_options: z.object({ include_usage: z.boolean(typed('stream_options.include_usage', 'true or false')).nullish() }, typed('stream_options', 'an object')).nullish(),
    n: z
      .number(typed('n', 'a whole number'))
      .int({ error: 'n must be a whole number' })
      .min(1, { error: 'n must be at least 1' })
      .max(maxChoices, { error: `n must be at most ${maxChoices} on this server (choices decode together in one batch)` })
      .nullish(),
    // vLLM's extension: generate past the model's end-of-sequence token (it ends a generation by default).
    ignore_eos: z.boolean(typed('ignore_eos', 'true or false')).nullish(),
    presence_penalty: penalty('presence_penalty'),
    frequency_penalty: penalty('frequency_penalty'),
    // Keys are token ids as strings (JSON objects have no other keys); the model's vocabulary is
    // checked where the model is known (completions.ts).
    logit_bias: z
      .record(
        z.string().regex(/^(0|[1-9][0-9]*)$/, { error: 'logit_bias keys must be token ids (whole numbers ≥ 0, as strings)' }),
        z.number({ error: 'logit_bias values must be numbers between -100 and 100' }).min(-100, { error: 'logit_bias values must be between -100 and 100' }).max(100, { error: 'logit_bias values must be between -100 and 100' }),
        { error: 'logit_bias must be an object mapping token ids to biases between -100 and 100' },
      )
      .nullish(),
  };
}

const ROLES = ['system', 'developer', 'user', 'assistant'] as const;

/**
 * The schemas for a model whose context holds `contextTokens` tokens, on a server that answers at
 * most `maxChoices` choices per request (default MAX_CHOICES).
 */
export function requestSchemas(limits: { contextTokens: number; maxChoices?: number }) {
  const common = samplingFields(limits.contextTokens, limits.maxChoices ?? MAX_CHOICES);
  const maxChoices = limits.maxChoices ?? MAX_CHOICES;
  const completion = z
    .object({
      ...common,
      // 0 only scores the prompt (with echo).
      max_tokens: maxTokensField('max_tokens', limits.contextTokens, 0),
      prompt: promptField(),
      echo: z.boolean(typed('echo', 'true or false')).nullish(),
      best_of: neutral('best_of', (v) => v === 1, '1'),
      logprobs: topN('logprobs'),
      suffix: neutral('suffix', (v) => v === '', 'null'),
    })
    .superRefine((r, ctx) => {
      const prompts = promptList(r.prompt).length;
      const seqs = prompts * (r.n ?? 1);
      if (seqs > maxChoices) ctx.addIssue({ code: 'custom', path: ['prompt'], message: `${prompts} prompts × n = ${r.n ?? 1} are ${seqs} sequences; this server runs at most ${maxChoices} per request (they decode together in one batch)` });
      if (r.max_tokens === 0 && r.echo !== true) ctx.addIssue({ code: 'custom', path: ['max_tokens'], message: 'max_tokens 0 generates nothing: it is only allowed with echo (to score the prompt)' });
    });
  const textPart = z.object({ type: z.literal('text', { error: 'only text content parts are supported' }), text: z.string(typed('text', 'a string')) });
  const chat = z.object({
    ...common,
    // OpenAI's newer name for max_tokens on chat; either may be sent.
    max_completion_tokens: common.max_tokens,
    messages: z
      .array(
        z.object({
          role: z.enum(ROLES, { error: `role must be one of ${ROLES.join(', ')} (tool messages are not supported)` }),
          content: z.union([z.string(), z.array(textPart)], { error: 'content must be a string or a list of {"type": "text", "text": …} parts' }),
          name: z.string(typed('name', 'a string')).nullish(),
        }, typed('message', 'an object with role and content')),
        typed('messages', 'a list of {role, content} messages'),
      )
      .min(1, { error: 'messages must hold at least one message' }),
    logprobs: z.boolean(typed('logprobs', 'true or false')).nullish(),
    top_logprobs: topN('top_logprobs'),
    tools: neutral('tools', (v) => Array.isArray(v) && v.length === 0, 'none'),
  }).superRefine((r, ctx) => {
    if (r.top_logprobs != null && r.logprobs !== true) ctx.addIssue({ code: 'custom', path: ['top_logprobs'], message: 'top_logprobs needs logprobs: true' });
  });
  return { completion, chat };
}

export type RequestSchemas = ReturnType<typeof requestSchemas>;
export type CompletionRequest = z.infer<RequestSchemas['completion']>;
export type ChatRequest = z.infer<RequestSchemas['chat']>;
export type ChatMessage = ChatRequest['messages'][number];

/** `body` checked against `schema`, or a 400 naming the first field that is wrong. */
export function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (body === undefined) throw badRequest('the body must be a JSON object sent with Content-Type: application/json');
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const param = issue.path.length ? paramName(issue.path) : null;
  const message = param === null && issue.code === 'invalid_type' ? 'the body must be a JSON object' : issue.message;
  throw badRequest(message, param);
}

/** A zod path as a field name: ["messages", 0, "content"] → "messages[0].content". */
function paramName(path: PropertyKey[]): string {
  return path.reduce<string>((s, p) => (typeof p === 'number' ? `${s}[${p}]` : s ? `${s}.${String(p)}` : String(p)), '');
}
