// Chat templates: a checkpoint folder whose tokenizer_config.json carries a real (ChatML) chat
// template is served with it — the prompt it renders, its eos_token as the end of a reply,
// /v1/models naming it — while a template that does not parse fails the load, and one that
// refuses a conversation answers 400.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import OpenAI from 'openai';

import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { ggufChatTemplate, loadChatTemplate, PLAIN_CHAT_TEMPLATE } from '../src/serve/chat-template.js';
import { exportGguf } from '../src/model/gguf/export.js';
import { readGgufHeader } from '../src/model/gguf/reader.js';
import { loadServedModel } from '../src/serve/load-model.js';
import { TelemetryBus } from '../src/offload/telemetry.js';
import type { RunningServer } from '../src/serve/server.js';
import { embeddedSpec, post, startEmbedded, type ErrorBody } from './serve/helpers.js';

// ChatML, as Qwen's and many other checkpoints write it, with a check that raises on an unknown role.
const CHATML =
  "{{ bos_token }}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** A checkpoint folder: the embedded model's files (linked) and the tokenizer_config.json given. */
function checkpointWith(config: unknown): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-chat-'));
  for (const f of fs.readdirSync(EMBEDDED_MODEL_DIR)) fs.symlinkSync(path.join(EMBEDDED_MODEL_DIR, f), path.join(dir, f));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  return dir;
}

describe('chat templates', function () {
  const dirs: string[] = [];
  after(function () {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  describe('loadChatTemplate', function () {
    it('renders a checkpoint\'s template with its messages, add_generation_prompt and bos/eos tokens', async function () {
      const dir = checkpointWith({ chat_template: CHATML, bos_token: '<s>', eos_token: { content: '<|im_end|>' } });
      dirs.push(dir);
      const t = await loadChatTemplate(dir);
      assert.equal(t.source, 'tokenizer_config.json');
      assert.deepEqual(t.stops, ['<|im_end|>']);
      assert.equal(
        t.render([{ role: 'system', content: 'You add.' }, { role: 'user', content: [{ type: 'text', text: '48+' }, { type: 'text', text: '27=' }] }]),
        '<s><|im_start|>system\nYou add.<|im_end|>\n<|im_start|>user\n48+27=<|im_end|>\n<|im_start|>assistant\n',
      );
    });

    it('keeps the plain template for a checkpoint without one', async function () {
      assert.equal(await loadChatTemplate(EMBEDDED_MODEL_DIR), PLAIN_CHAT_TEMPLATE);
      const dir = checkpointWith({ eos_token: '</s>' });
      dirs.push(dir);
      assert.equal((await loadChatTemplate(dir)).source, 'plain');
    });

    it('fails with the file and the reason when the template does not parse or is not a string', async function () {
      for (const [cfg, why] of [[{ chat_template: '{% for m in messages %}{{ m.content }' }, /does not parse/], [{ chat_template: 5 }, /must be a string/], ['{"chat_template": ', /not valid JSON/]] as const) {
        const dir = checkpointWith(cfg);
        dirs.push(dir);
        await assert.rejects(loadChatTemplate(dir), (e: Error) => e.message.includes(path.join(dir, 'tokenizer_config.json')) && why.test(e.message));
      }
    });

    it('fails the model\'s load on a bad template, naming it', async function () {
      const dir = checkpointWith({ chat_template: '{% if %}' });
      dirs.push(dir);
      await assert.rejects(loadServedModel(embeddedSpec({ dir, engine: 'resident' }), new TelemetryBus(), () => {}), /tokenizer_config\.json: the chat_template does not parse/);
    });
  });

  describe('a server over a checkpoint with a ChatML template', function () {
    let server: RunningServer;
    let client: OpenAI;
    let id: string;
    const messages = [{ role: 'user' as const, content: '48+27=' }];
    const rendered = '<|im_start|>user\n48+27=<|im_end|>\n<|im_start|>assistant\n';
    before(async function () {
      const dir = checkpointWith({ chat_template: CHATML, eos_token: '<|im_end|>' });
      dirs.push(dir);
      id = path.basename(dir);
      server = await startEmbedded({ spec: { dir, engine: 'resident' } });
      client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    });
    after(async function () {
      await server?.shutdown();
    });

    it('says in /v1/models which template it uses', async function () {
      const models = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { chat_template: string }[] };
      assert.equal(models.data[0].chat_template, 'tokenizer_config.json');
    });

    it('prompts the model with the rendered template (its eos_token among the stops)', async function () {
      const chat = await client.chat.completions.create({ model: id, messages, max_tokens: 12, temperature: 0 });
      assert.equal(chat.usage!.prompt_tokens, Buffer.byteLength(rendered)); // byte tokenizer: one token per byte
      const same = await client.completions.create({ model: id, prompt: rendered, max_tokens: 12, temperature: 0, stop: ['<|im_end|>'] });
      assert.equal(chat.choices[0].message.content, same.choices[0].text);
      assert.equal(chat.choices[0].finish_reason, same.choices[0].finish_reason);
    });

    it('answers 400 naming messages when the template refuses them', async function () {
      const res = await post(server.url, '/v1/chat/completions', { messages: [{ role: 'developer', content: 'x' }] });
      assert.equal(res.status, 400);
      const e = (await res.json()) as ErrorBody;
      assert.equal(e.error.param, 'messages');
      assert.match(e.error.message, /unknown role developer/);
    });
  });

  describe('a GGUF file', function () {
    it('carries the checkpoint\'s template through export-gguf (tokenizer.chat_template), and a server over the file renders with it', async function () {
      const dir = checkpointWith({ chat_template: CHATML, eos_token: '<|im_end|>' });
      dirs.push(dir);
      const file = path.join(dir, 'chat.f32.gguf');
      exportGguf({ dir, out: file, type: 'f32' });
      const meta = readGgufHeader(file).metadata;
      assert.equal(meta.get('tokenizer.chat_template')?.value, CHATML);
      const fromFile = ggufChatTemplate(file, meta);
      assert.equal(fromFile.source, 'gguf');
      const messages = [{ role: 'user' as const, content: '48+27=' }];
      assert.equal(fromFile.render(messages), (await loadChatTemplate(dir)).render(messages));
      const server = await startEmbedded({ spec: { dir: file, engine: 'resident' } });
      try {
        const models = (await (await fetch(`${server.url}/v1/models`)).json()) as { data: { chat_template: string }[] };
        assert.equal(models.data[0].chat_template, 'gguf');
        const res = await post(server.url, '/v1/chat/completions', { messages: [{ role: 'developer', content: 'x' }] });
        assert.equal(res.status, 400, 'the file\'s template refuses an unknown role, as the folder\'s does');
      } finally {
        await server.shutdown();
      }
    });

    it('keeps the plain template without tokenizer.chat_template, and names the key when it is not a string', function () {
      assert.equal(ggufChatTemplate('x.gguf', new Map()), PLAIN_CHAT_TEMPLATE);
      assert.throws(() => ggufChatTemplate('x.gguf', new Map([['tokenizer.chat_template', { value: 7 }]])), /x\.gguf: metadata tokenizer\.chat_template must be a string/);
      assert.throws(() => ggufChatTemplate('x.gguf', new Map([['tokenizer.chat_template', { value: '{% for %}' }]])), /x\.gguf: metadata tokenizer\.chat_template: the chat_template does not parse/);
    });
  });
});
