// The OpenAI-compatible API on a real HTTP server (loopback, port 0) over the embedded model with
// the default offload engine, driven with fetch the way a client drives it: every endpoint, usage
// counts, stop strings, seeds, and streams that carry exactly the non-streamed text.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { CHAT_STOPS, renderChat } from '../src/serve/chat-template.js';
import type { RunningServer } from '../src/serve/server.js';
import { post, readSse, startEmbedded } from './serve/helpers.js';

interface Completion {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: { index: number; text: string; logprobs: null; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}
interface ChatCompletion {
  id: string;
  object: string;
  model: string;
  choices: { index: number; message: { role: string; content: string }; finish_reason: string }[];
  usage: Completion['usage'];
}
interface Chunk {
  id: string;
  object: string;
  model: string;
  choices: { index: number; text?: string; delta?: { role?: string; content?: string }; finish_reason: string | null }[];
  usage?: Completion['usage'] | null;
}

const reference = JSON.parse(fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'reference.json'), 'utf8')) as { prompts: { prompt: string; greedy_bytes: number[] }[] };

describe('the OpenAI-compatible API (embedded model, offload engine)', function () {
  let server: RunningServer;
  let url: string;
  before(async function () {
    server = await startEmbedded();
    url = server.url;
  });
  after(async function () {
    await server?.shutdown();
  });

  describe('GET /health', function () {
    it('answers 200 with the model, backend and engine once the model is loaded', async function () {
      const res = await fetch(`${url}/health`);
      assert.equal(res.status, 200);
      const h = (await res.json()) as Record<string, unknown>;
      assert.equal(h.status, 'ok');
      assert.equal(h.model, 'ebserve-moe-8x');
      assert.match(String(h.backend), /^(wasm|cpu|tensorflow)$/);
      assert.equal(h.engine, 'offload');
      const { memory_dense_bytes: dense, memory_host_bytes: host, ...details } = h.engine_details as Record<string, unknown>;
      assert.deepEqual(details, {
        experts_per_layer: 'from memory budget', tier_a_bytes: 0.75 * 6.3e6, tier_b_bytes: 0.25 * 6.3e6, tier_a_form: 'fused', native_forward: true, policy: 'u-shape', profile: 'cpu', controller: 'off',
        dense_form: 'as stored (bf16 bits where exact, else f32)',
        level: 5, level_meaning: 'the exact bytes', level_fixed: true, link: 'copy', link_emulated: false, experts_on: 'host memory',
        // What each tier holds (serve.disk-tier.test.ts checks the dense and host figures): no
        // canary caches with the controller off; 2 × 2 kv heads × 32 × 4 bytes a layer per token.
        memory_host_holds: 'every level of every expert', memory_device_bytes: 6.3e6, memory_canary_bytes: 0, memory_kv_bytes_per_token: 8 * 2 * 2 * 32 * 4, memory_runtime_bytes: 512 * 2 ** 20,
      });
      assert.ok(Number(dense) > 0 && Number(host) > 0);
      assert.equal(h.context_tokens, 256);
    });
  });

  describe('GET /v1/models', function () {
    it('lists the one model served, with its context length', async function () {
      const res = await fetch(`${url}/v1/models`);
      assert.equal(res.status, 200);
      const body = (await res.json()) as { object: string; data: { id: string; object: string; owned_by: string; max_model_len: number; created: number; chat_template: string }[] };
      assert.equal(body.object, 'list');
      assert.equal(body.data.length, 1);
      assert.deepEqual({ ...body.data[0], created: 0 }, { id: 'ebserve-moe-8x', object: 'model', created: 0, owned_by: 'ebserve', max_model_len: 256, chat_template: 'plain' });
      assert.ok(Math.abs(body.data[0].created - Date.now() / 1000) < 600);
    });
  });

  describe('POST /v1/completions', function () {
    it('answers with the greedy continuation the training run recorded, with usage counts and finish_reason "length"', async function () {
      const r = reference.prompts[0];
      const want = r.greedy_bytes.slice(0, 12); // the greedy continuation's first 12 tokens (one per byte)
      const res = await post(url, '/v1/completions', { prompt: r.prompt, max_tokens: want.length });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /application\/json/);
      const c = (await res.json()) as Completion;
      assert.match(c.id, /^cmpl-[0-9a-f]{32}$/);
      assert.equal(c.object, 'text_completion');
      assert.equal(c.model, 'ebserve-moe-8x');
      assert.equal(c.choices.length, 1);
      assert.equal(c.choices[0].text, Buffer.from(want).toString('utf8'));
      assert.equal(c.choices[0].finish_reason, 'length');
      assert.equal(c.choices[0].logprobs, null);
      const promptTokens = Buffer.byteLength(r.prompt, 'utf8'); // byte tokenizer: one token per byte
      assert.deepEqual(c.usage, { prompt_tokens: promptTokens, completion_tokens: want.length, total_tokens: promptTokens + want.length });
    });

    it('ends at a stop string, leaves it out of the text, and says finish_reason "stop"', async function () {
      for (const stop of ['\n', ['\n', 'zzz']]) {
        const c = (await (await post(url, '/v1/completions', { prompt: '48+27=', max_tokens: 8, stop })).json()) as Completion;
        assert.equal(c.choices[0].text, '75');
        assert.equal(c.choices[0].finish_reason, 'stop');
        assert.equal(c.usage.completion_tokens, 3); // "7", "5", then the "\n" that stopped it
      }
    });

    it('generates 16 tokens when max_tokens is not given (OpenAI\'s default)', async function () {
      const c = (await (await post(url, '/v1/completions', { prompt: 'The whale' })).json()) as Completion;
      assert.equal(c.usage.completion_tokens, 16);
      assert.equal(c.choices[0].finish_reason, 'length');
    });

    it('streams text_completion chunks whose text is the non-streamed greedy text, then a finish_reason chunk and [DONE]', async function () {
      const request = { prompt: 'Call me Ishmael.', max_tokens: 24, stop: ['LORD'] };
      const whole = (await (await post(url, '/v1/completions', request)).json()) as Completion;
      const res = await post(url, '/v1/completions', { ...request, stream: true });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
      const events = await readSse(res);
      assert.equal(events.at(-1), '[DONE]');
      const chunks = events.slice(0, -1) as Chunk[];
      assert.ok(chunks.length >= 2);
      for (const ch of chunks) {
        assert.equal(ch.object, 'text_completion');
        assert.equal(ch.id, chunks[0].id);
        assert.equal(ch.model, 'ebserve-moe-8x');
        assert.equal(ch.usage, undefined);
      }
      const last = chunks.at(-1)!;
      assert.deepEqual([last.choices[0].text, last.choices[0].finish_reason], ['', whole.choices[0].finish_reason]);
      assert.ok(chunks.slice(0, -1).every((ch) => ch.choices[0].finish_reason === null));
      assert.equal(chunks.map((ch) => ch.choices[0].text).join(''), whole.choices[0].text);
    });

    it('adds a usage chunk with empty choices before [DONE] when stream_options.include_usage is set', async function () {
      const res = await post(url, '/v1/completions', { prompt: '12+34=', max_tokens: 6, stop: '\n', stream: true, stream_options: { include_usage: true } });
      const events = await readSse(res);
      assert.equal(events.at(-1), '[DONE]');
      const usage = events.at(-2) as Chunk;
      assert.deepEqual(usage.choices, []);
      assert.deepEqual(usage.usage, { prompt_tokens: 6, completion_tokens: 3, total_tokens: 9 });
      const text = (events.slice(0, -2) as Chunk[]).map((ch) => {
        assert.equal(ch.usage, null);
        return ch.choices[0].text;
      });
      assert.equal(text.join(''), '46');
    });

    it('reproduces a sampled completion from its seed, and gives another text for another seed', async function () {
      const run = async (seed: number) =>
        ((await (await post(url, '/v1/completions', { prompt: 'The whale', max_tokens: 16, temperature: 0.8, top_p: 0.95, seed })).json()) as Completion).choices[0].text;
      const [a, b, c] = [await run(11), await run(11), await run(12)];
      assert.equal(a, b);
      assert.notEqual(a, c);
    });

    it('accepts the name of the model it serves, and fields that change nothing about the output', async function () {
      const res = await post(url, '/v1/completions', { model: 'ebserve-moe-8x', prompt: '48+27=', max_tokens: 4, stop: '\n', user: 'someone', n: 1, echo: false, logprobs: null, presence_penalty: 0 });
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as Completion).choices[0].text, '75');
    });
  });

  describe('POST /v1/chat/completions', function () {
    const messages = [
      { role: 'system', content: 'You add numbers.' },
      { role: 'user', content: [{ type: 'text', text: 'Call me ' }, { type: 'text', text: 'Ishmael.' }] },
    ];

    it('renders the messages as "role: content" lines ending in "assistant:"', function () {
      assert.equal(renderChat([{ role: 'developer', content: 'Be brief.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello.' }, { role: 'user', content: 'Sum?' }]),
        'system: Be brief.\nuser: Hi\nassistant: Hello.\nuser: Sum?\nassistant:');
      assert.deepEqual(CHAT_STOPS, ['\nuser:', '\nassistant:', '\nsystem:']);
    });

    it('answers what the model continues the rendered prompt with, stopping at the next turn, with usage counts', async function () {
      const res = await post(url, '/v1/chat/completions', { messages, max_tokens: 12 });
      assert.equal(res.status, 200);
      const c = (await res.json()) as ChatCompletion;
      assert.match(c.id, /^chatcmpl-[0-9a-f]{32}$/);
      assert.equal(c.object, 'chat.completion');
      assert.equal(c.choices[0].message.role, 'assistant');
      const prompt = 'system: You add numbers.\nuser: Call me Ishmael.\nassistant:';
      const same = (await (await post(url, '/v1/completions', { prompt, max_tokens: 12, stop: CHAT_STOPS })).json()) as Completion;
      assert.equal(c.choices[0].message.content, same.choices[0].text);
      assert.equal(c.choices[0].finish_reason, same.choices[0].finish_reason);
      assert.deepEqual(c.usage, same.usage);
      assert.equal(c.usage.prompt_tokens, prompt.length);
    });

    it('streams a role chunk, content deltas that add up to the non-streamed reply, a finish_reason chunk, then [DONE]', async function () {
      const whole = (await (await post(url, '/v1/chat/completions', { messages, max_completion_tokens: 16 })).json()) as ChatCompletion;
      assert.equal(whole.usage.completion_tokens, 16); // max_completion_tokens is OpenAI's newer max_tokens
      const events = await readSse(await post(url, '/v1/chat/completions', { messages, max_completion_tokens: 16, stream: true }));
      assert.equal(events.at(-1), '[DONE]');
      const chunks = events.slice(0, -1) as Chunk[];
      assert.ok(chunks.every((ch) => ch.object === 'chat.completion.chunk' && ch.id === chunks[0].id));
      assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
      assert.deepEqual(chunks.at(-1)!.choices[0].delta, {});
      assert.equal(chunks.at(-1)!.choices[0].finish_reason, whole.choices[0].finish_reason);
      assert.equal(chunks.slice(1, -1).map((ch) => ch.choices[0].delta!.content).join(''), whole.choices[0].message.content);
    });

    it('uses the rest of the context when no max_tokens is given', async function () {
      // A long history leaves a short rest, so the test stays quick: 256 − prompt tokens.
      const long = [{ role: 'user', content: 'x'.repeat(230) }];
      const c = (await (await post(url, '/v1/chat/completions', { messages: long })).json()) as ChatCompletion;
      const prompt = renderChat(long as never);
      if (c.choices[0].finish_reason === 'length') assert.equal(c.usage.completion_tokens, 256 - prompt.length);
      else assert.ok(c.usage.completion_tokens <= 256 - prompt.length);
    });
  });
});
