// The native llama.cpp peer's pure parts (bench/peer/llama-bench.ts): llama-bench's and
// llama-batched-bench's JSONL output parsed into results, their argument lists, and the check of
// native figures against ../shared/ANCHORS.md. Never builds or runs llama.cpp (make bench-peer does).
import assert from 'node:assert/strict';

import {
  ANCHORS_EMBEDDED, anchorCheck, batchedBenchArgs, llamaBenchArgs, parseBatchedBenchJsonl, parseLlamaBenchJsonl,
} from '../bench/peer/llama-bench.js';

/** One line of `llama-bench -o jsonl` as this llama.cpp prints it (fields in its order, abridged values). */
function benchLine(file: string, nPrompt: number, nGen: number, threads: number, avgTs: number, depth = 0): string {
  return `{"build_commit": "80fb11ac", "build_number": 1, "cpu_info": "Intel(R) Xeon(R) Processor", "gpu_info": "", "backends": "CPU", `
    + `"model_filename": "${file}", "model_type": "llama ?B all F32", "model_size": 46137344, "model_n_params": 11534336, `
    + `"n_batch": 2048, "n_ubatch": 512, "n_threads": ${threads}, "cpu_mask": "0x0", "cpu_strict": false, "poll": 50, `
    + `"type_k": "f16", "type_v": "f16", "n_gpu_layers": 99, "n_cpu_moe": 0, "split_mode": "layer", "main_gpu": 0, "no_kv_offload": false, `
    + `"flash_attn": -1, "devices": "auto", "tensor_split": "0.00", "tensor_buft_overrides": "none", "load_mode": "mmap", "lazy_mode": "off", "embeddings": false, `
    + `"no_op_offload": 0, "no_host": false, "fit_target": 0, "fit_min_ctx": 0, "n_prompt": ${nPrompt}, "n_gen": ${nGen}, "n_depth": ${depth}, `
    + `"test_time": "2026-12-07T06:40:00Z", "avg_ns": ${Math.round(((nPrompt || nGen) / avgTs) * 1e9)}, "stddev_ns": 1000, "avg_ts": ${avgTs}, "stddev_ts": 12.5, `
    + `"samples_ns": [ 1, 2, 3 ],"samples_ts": [ ${avgTs - 10}, ${avgTs}, ${avgTs + 10} ]}`;
}

describe('llama.cpp native peer: llama-bench output and the ANCHORS check', () => {
  const f32 = '/x/build/peer/ebserve-moe-8x.f32.gguf';
  const q8 = '/x/build/peer/ebserve-moe-8x.q8_0.gguf';
  const output = [
    benchLine(f32, 512, 0, 1, 8100.5),
    benchLine(f32, 0, 128, 1, 2400.25),
    benchLine(q8, 512, 0, 1, 9500),
    benchLine(q8, 0, 128, 1, 3300),
    benchLine(q8, 0, 128, 2, 4100),
    benchLine(f32, 0, 96, 1, 1800, 128),
    '',
  ].join('\n');

  it('parses each pp and tg test into a result, tokens/s as printed', () => {
    const r = parseLlamaBenchJsonl(output);
    assert.equal(r.length, 6);
    assert.deepEqual(
      r.map((x) => [x.file, x.test, x.tokens, x.depth, x.threads, x.avg_ts]),
      [[f32, 'pp', 512, 0, 1, 8100.5], [f32, 'tg', 128, 0, 1, 2400.25], [q8, 'pp', 512, 0, 1, 9500], [q8, 'tg', 128, 0, 1, 3300], [q8, 'tg', 128, 0, 2, 4100],
        [f32, 'tg', 96, 128, 1, 1800]],
    );
    assert.equal(r[1].stddev_ts, 12.5);
    assert.deepEqual(r[1].samples_ts, [2390.25, 2400.25, 2410.25]);
    assert.equal(r[0].build_commit, '80fb11ac');
    assert.equal(r[0].cpu_info, 'Intel(R) Xeon(R) Processor');
  });

  it('ignores log lines around the JSON, and refuses a malformed line, a missing figure or a mixed test', () => {
    assert.equal(parseLlamaBenchJsonl(`load_backend: loaded CPU backend\n${benchLine(f32, 0, 128, 2, 2000)}\nllama_perf: done\n`).length, 1);
    assert.throws(() => parseLlamaBenchJsonl(benchLine(f32, 0, 128, 1, 2000).slice(0, -5)), /line 1 is not JSON/);
    assert.throws(() => parseLlamaBenchJsonl(benchLine(f32, 0, 128, 1, 2000).replace('"avg_ts": 2000', '"avg_ts": "fast"')), /avg_ts is "fast"/);
    assert.throws(() => parseLlamaBenchJsonl(benchLine(f32, 512, 128, 1, 2000)), /not a plain pp or tg test/);
    assert.throws(() => parseLlamaBenchJsonl(benchLine(f32, 0, 0, 1, 2000)), /not a plain pp or tg test/);
  });

  it('sets the 1-thread native figures beside the anchors, ratio native / anchor, by the weights of each file', () => {
    const weightsOf = (file: string) => file.replace(/^.*ebserve-moe-8x\./, '').replace(/\.gguf$/, '');
    const check = anchorCheck(parseLlamaBenchJsonl(output), ANCHORS_EMBEDDED, weightsOf);
    assert.deepEqual(check.map((c) => [c.weights, c.threads]), [['f32', 1], ['q8_0', 1]]);
    assert.equal(check[0].decode.native, 2400.25);
    assert.equal(check[0].decode.anchor, 2515);
    assert.ok(Math.abs(check[0].decode.ratio - 2400.25 / 2515) < 1e-12);
    assert.equal(check[0].prompt.anchor, 8306);
    assert.ok(Math.abs(check[1].prompt.ratio - 9500 / 9718) < 1e-12);
    // Neither the 2-thread q8_0 result nor the f32 one at depth 128 is an anchor's; a file with no result leaves its anchor out.
    assert.equal(check[1].decode.native, 3300);
    assert.deepEqual(anchorCheck(parseLlamaBenchJsonl(benchLine(q8, 0, 128, 1, 3300)), ANCHORS_EMBEDDED, weightsOf), []);
  });

  it('the anchors are ANCHORS.md\'s embedded-model figures', () => {
    assert.deepEqual(ANCHORS_EMBEDDED, [
      { weights: 'f32', threads: 1, decode: 2515, prompt: 8306 },
      { weights: 'q8_0', threads: 1, decode: 3222, prompt: 9718 },
    ]);
  });

  it("builds llama-bench's arguments: every file, the thread counts, pp/tg/reps, JSONL", () => {
    assert.deepEqual(llamaBenchArgs({ files: [f32, q8], threads: [1, 2], prompt: 512, gen: 128, reps: 5 }),
      ['-m', f32, '-m', q8, '-t', '1,2', '-p', '512', '-n', '128', '-r', '5', '-o', 'jsonl']);
    assert.deepEqual(llamaBenchArgs({ files: [f32], threads: [1], prompt: 0, gen: 96, depth: 128, reps: 5 }),
      ['-m', f32, '-t', '1', '-p', '0', '-n', '96', '-d', '128', '-r', '5', '-o', 'jsonl']);
  });
});

describe('llama.cpp native peer: llama-batched-bench output', () => {
  const line = (pl: number, speedTg: number) =>
    `{"n_kv_max": 1744, "n_batch": 1744, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, `
    + `"pp": 122, "tg": 96, "pl": ${pl}, "n_kv": ${pl * 218}, "t_pp": 0.010000, "speed_pp": ${pl * 12200}.000000, "t_tg": 0.050000, "speed_tg": ${speedTg}, "t": 0.06, "speed": 1000.0}`;

  it('parses each case among its log lines; decode tokens/s is S_TG over all sequences', () => {
    const r = parseBatchedBenchJsonl(['main: n_kv_max = 1744', line(1, 1920.5), 'llama_perf_context_print: load time', line(8, 5400)].join('\n'));
    assert.deepEqual(r, [
      { prompt: 122, gen: 96, sequences: 1, threads: 2, decode_ts: 1920.5, prompt_ts: 12200 },
      { prompt: 122, gen: 96, sequences: 8, threads: 2, decode_ts: 5400, prompt_ts: 97600 },
    ]);
    assert.throws(() => parseBatchedBenchJsonl(line(8, 5400).replace('"speed_tg": 5400', '"speed_tg": null')), /speed_tg is null/);
  });

  it('sizes the context for the largest case, each sequence its own prompt', () => {
    const a = batchedBenchArgs({ file: 'm.gguf', threads: 1, prompt: 122, gen: 96, sequences: [1, 8] });
    assert.equal(a[a.indexOf('-c') + 1], String(8 * (122 + 96)));
    assert.equal(a[a.indexOf('-npl') + 1], '1,8');
    assert.equal(a[a.indexOf('-t') + 1], '1');
    assert.equal(a[a.indexOf('--output-format') + 1], 'jsonl');
  });
});
