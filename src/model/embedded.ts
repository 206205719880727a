// Where the embedded default model lives: models/ at the package root, the same path from src/
// and from dist/. A module of its own so that naming it loads no TensorFlow.js.
import { fileURLToPath } from 'node:url';

/** The folder of the embedded default model (a Hugging Face-style checkpoint). */
export const EMBEDDED_MODEL_DIR = fileURLToPath(new URL('../../models/ebserve-moe-8x', import.meta.url));
