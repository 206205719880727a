/**
 * POST /tokenize and POST /detokenize: the served model's tokenizer over HTTP, in the shapes
 * vLLM's and llama.cpp's servers answer (and lm-evaluation-harness's remote tokenizer reads):
 *
 *   POST /tokenize    {"prompt": "48+27="}  (or {"content": …}, llama.cpp's name; optional
 *                     "add_special_tokens", default true)  → {"tokens": [52, 56, …], "count": 6, "max_model_len": 256}
 *   POST /detokenize  {"tokens": [52, 56]}                  → {"prompt": "48"}
 *
 * A body that is not what these ask for is a 400 naming the field; a token outside the
 * vocabulary is a 400 naming it (tokens[i]).
 *
 * @example
 * app.post('/tokenize', express.json(), tokenizeHandler(ctx));
 */
import type { RequestHandler } from 'express';
import { z } from 'zod';

import { badRequest, unavailable } from './errors.js';
import { parseRequest } from './schemas.js';
import type { ServedModel } from './served-model.js';

const tokenizeBody = z
  .object({
    prompt: z.string({ error: 'prompt must be a string' }).optional(),
    content: z.string({ error: 'content must be a string' }).optional(),
    add_special_tokens: z.boolean({ error: 'add_special_tokens must be true or false' }).nullish(),
    model: z.string({ error: 'model must be a string' }).nullish(),
  }, { error: 'the body must be a JSON object' })
  .superRefine((b, ctx) => {
    if (b.prompt === undefined && b.content === undefined) ctx.addIssue({ code: 'custom', path: ['prompt'], message: 'prompt is required (a string; llama.cpp\'s "content" is accepted too)' });
    else if (b.prompt !== undefined && b.content !== undefined) ctx.addIssue({ code: 'custom', path: ['content'], message: 'send prompt or content, not both' });
  });

const detokenizeBody = z.object(
  {
    tokens: z.array(z.number({ error: 'tokens must hold token ids (whole numbers ≥ 0)' }).int({ error: 'tokens must hold whole numbers' }).min(0, { error: 'tokens must hold token ids ≥ 0' }), {
      error: (i) => (i.input === undefined ? 'tokens is required (a list of token ids)' : 'tokens must be a list of token ids'),
    }),
    model: z.string({ error: 'model must be a string' }).nullish(),
  },
  { error: 'the body must be a JSON object' },
);

/** POST /tokenize over the model `model()` returns (503 while it loads). */
export function tokenizeHandler(model: () => ServedModel | null): RequestHandler {
  return (req, res) => {
    const m = model();
    if (!m) throw unavailable('Loading model');
    const body = parseRequest(tokenizeBody, req.body);
    const tokens = m.tokenizer.encode((body.prompt ?? body.content)!, { addSpecialTokens: body.add_special_tokens ?? true });
    res.json({ tokens, count: tokens.length, max_model_len: m.contextTokens });
  };
}

/** POST /detokenize over the model `model()` returns (503 while it loads). */
export function detokenizeHandler(model: () => ServedModel | null): RequestHandler {
  return (req, res) => {
    const m = model();
    if (!m) throw unavailable('Loading model');
    const { tokens } = parseRequest(detokenizeBody, req.body);
    const bad = tokens.findIndex((t) => t >= m.vocabSize);
    if (bad >= 0) throw badRequest(`token ${tokens[bad]} is outside the vocabulary (0..${m.vocabSize - 1})`, `tokens[${bad}]`);
    res.json({ prompt: m.tokenizer.decode(tokens) });
  };
}
