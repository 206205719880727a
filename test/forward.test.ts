// Every forward path through the forward conformance suite (test/forward/conformance.ts): the
// TensorFlow.js forward, and the native forward with each expert engine.
import { EMBEDDED_MODEL_DIR, checkpointExperts, loadModel } from '../src/model/load.js';
import { OffloadExpertEngine } from '../src/offload/engine.js';
import { CopyLink } from '../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan } from '../src/offload/plan.js';
import { buildStore } from '../src/offload/store.js';
import { runForwardConformance } from './forward/conformance.js';

const reference = () => loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', nativeForward: false });

/** The native forward over the offload engine at the exact level: a cache of 2× the active experts, prefetch on. */
const offloaded = (compute: 'cpu' | 'tfjs') => () =>
  loadModel(EMBEDDED_MODEL_DIR, {
    backend: 'wasm',
    engine: async (checkpoint) => {
      const store = await buildStore(checkpointExperts(checkpoint), DEFAULT_LADDER);
      const c = checkpoint.config;
      return new OffloadExpertEngine({
        store, link: new CopyLink(), compute, plan: uniformPlan(c.numLayers, store.exact),
        budget: { tierABytes: 2 * c.topK * c.numLayers * store.expertValues(0, 0) * 4, tierBBytes: 0 },
      });
    },
  });

runForwardConformance({ name: 'TensorFlow.js forward, resident tfjs experts (the reference)', load: reference, batchInvariant: true }, reference);
runForwardConformance({ name: 'native forward, resident tfjs experts', load: () => loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm' }), batchInvariant: false }, reference);
runForwardConformance({ name: 'native forward, CPU engine (dense, the checkpoint\'s bf16 bits)', load: () => loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: {} }), batchInvariant: true }, reference);
runForwardConformance({ name: 'native forward, CPU engine on one thread', load: () => loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: { threads: 1 } }), batchInvariant: true }, reference);
runForwardConformance({ name: 'native forward, offload engine computing on the cache\'s f32 buffers', load: offloaded('cpu'), batchInvariant: true }, reference);
runForwardConformance({ name: 'native forward, offload engine computing with TensorFlow.js', load: offloaded('tfjs'), batchInvariant: false }, reference);
runForwardConformance({ name: 'TensorFlow.js forward, offload engine', load: async () => {
  const m = await offloaded('cpu')();
  m.model.useNativeForward(undefined);
  return m;
}, batchInvariant: true }, reference);
