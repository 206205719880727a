/**
 * The error every codec failure becomes: a damaged or forged stream, a bound that cannot be used,
 * an output buffer too small. `code` is one of the names in FORMAT.md (`TRUNCATED`, `CHECKSUM`,
 * `BAD_MAGIC`, …) so callers can branch on it; `message` says what and where.
 *
 * @example
 * try { decompress(bytes) } catch (e) { if (e instanceof CodecError && e.code === 'CHECKSUM') refetch() }
 */
export class CodecError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'CodecError';
    this.code = code;
  }
}

/** Runs `fn`, turning the addon's tagged errors into CodecError. */
export function codecCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw asCodecError(e);
  }
}

/** Awaits `p`, turning the addon's tagged errors into CodecError. */
export async function codecAwait<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    throw asCodecError(e);
  }
}

function asCodecError(e: unknown): unknown {
  if (e && typeof e === 'object' && (e as { codecError?: boolean }).codecError) {
    const err = e as { code: string; message: string };
    return new CodecError(err.code, err.message);
  }
  return e;
}
