// The profile's dense section through a real server on loopback: with form symbols (and lm_head)
// the native forward holds the attention projections and the LM head as 8-bit symbols, the startup
// log and /health say so with each role's bytes, and completions still answer; as stored, the same
// lines name bf16 / f32. A bad dense section is refused naming the field.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import { DEFAULT_PROFILE } from '../src/cli/check-config.js';
import { loadProfile } from '../src/control/profile.js';
import { ConfigError } from '../src/control/config-file.js';
import type { RunningServer } from '../src/serve/server.js';
import { post, serverLog, startEmbedded } from './serve/helpers.js';

describe('serve: the dense weights as the profile says', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-dense-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const profileWith = (dense: unknown) => {
    const file = path.join(dir, `p${Math.random().toString(36).slice(2)}.yaml`);
    const base = YAML.parse(fs.readFileSync(DEFAULT_PROFILE, 'utf8'));
    if (base.model !== undefined) base.model = path.resolve(path.dirname(DEFAULT_PROFILE), base.model);
    fs.writeFileSync(file, YAML.stringify({ ...base, dense }));
    return file;
  };

  for (const [name, dense, want] of [
    ['as 8-bit symbols, the LM head too', { form: 'symbols', lm_head: true, int8_activations: true }, /attention projections and LM head as 8-bit symbols/],
    ['as 4-bit symbols, the LM head as stored', { form: 'symbols', bits: 4 }, /attention projections as 4-bit symbols at per-tensor bounds; routers, embeddings and LM head as stored/],
    ['as stored', { form: 'stored' }, /as stored/],
  ] as const) {
    it(`holds them ${name}, says so at startup and in /health, and answers`, async function () {
      const from = serverLog.length;
      let server: RunningServer | undefined;
      try {
        server = await startEmbedded({ spec: { engine: 'cpu', profile: loadProfile(profileWith(dense)) } });
        const line = serverLog.slice(from).find((l) => l.includes('dense weights'));
        assert.ok(line, 'a startup line for the dense weights');
        assert.match(line, want);
        assert.match(line, /attention [\d.]+ MB \((symbols|bf16|f32)\)/);
        if ('lm_head' in dense) assert.match(line, /attention [\d.]+ MB \(symbols\), .*LM head [\d.]+ MB \(symbols\)/);
        const health = (await (await fetch(`${server.url}/health`)).json()) as { engine_details: Record<string, unknown> };
        assert.match(String(health.engine_details.dense_form), want);
        const res = await post(server.url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 8 });
        assert.equal(res.status, 200);
        assert.ok(((await res.json()) as { choices: { text: string }[] }).choices[0].text.length > 0);
      } finally {
        await server?.shutdown({ drainTimeoutSeconds: 0 });
      }
    });
  }

  it('refuses lm_head, int8_activations or bits without form symbols, an unknown form and other bits, naming the field', function () {
    assert.throws(() => loadProfile(profileWith({ form: 'stored', lm_head: true })), (e: unknown) => e instanceof ConfigError && /dense\.lm_head.*expected only with form: symbols/.test(e.message));
    assert.throws(() => loadProfile(profileWith({ form: 'stored', int8_activations: true })), (e: unknown) => e instanceof ConfigError && /dense\.int8_activations/.test(e.message));
    assert.throws(() => loadProfile(profileWith({ form: 'stored', bits: 4 })), (e: unknown) => e instanceof ConfigError && /dense\.bits.*expected only with form: symbols/.test(e.message));
    assert.throws(() => loadProfile(profileWith({ form: 'symbols', bits: 6 })), (e: unknown) => e instanceof ConfigError && /dense\.bits.*expected 4 or 8/.test(e.message));
    assert.throws(() => loadProfile(profileWith({ form: 'f16' })), (e: unknown) => e instanceof ConfigError && /dense\.form.*expected stored or symbols/.test(e.message));
  });
});
