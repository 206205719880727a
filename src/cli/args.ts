// Argument parsing shared by the commands: node's parseArgs, with errors that say which command
// and what was expected, and exit code 2 for usage errors (1 for failures of the work itself).
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {}

export type Options = NonNullable<ParseArgsConfig['options']>;

/** Parses argv for `command`; throws UsageError naming the problem. */
export function parse(command: string, argv: string[], options: Options, positionals: string[]) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message}`);
  }
  if (parsed.values.help) return { values: parsed.values, positionals: parsed.positionals, help: true };
  if (parsed.positionals.length !== positionals.length) {
    throw new UsageError(
      `${command}: expected ${positionals.join(' ')} (${positionals.length} argument${positionals.length === 1 ? '' : 's'}), got ${parsed.positionals.length}`,
    );
  }
  return { values: parsed.values, positionals: parsed.positionals, help: false };
}

/** The value of --name if it is one of `allowed`. */
export function oneOf<T extends string>(command: string, name: string, value: unknown, allowed: readonly T[], fallback?: T): T {
  if (value === undefined && fallback !== undefined) return fallback;
  if (typeof value !== 'string' || !allowed.includes(value as T)) {
    throw new UsageError(`${command}: --${name} must be one of ${allowed.join(', ')}${value === undefined ? '' : `, got ${String(value)}`}`);
  }
  return value as T;
}

/** The value of --name as a positive finite number. */
export function positiveNumber(command: string, name: string, value: unknown): number {
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  if (!(n > 0) || !Number.isFinite(n)) {
    throw new UsageError(`${command}: --${name} must be a positive number, got ${value === undefined ? 'nothing' : String(value)}`);
  }
  return n;
}

/** The value of --name as an integer in [lo, hi], or `fallback` when absent. */
export function integer(command: string, name: string, value: unknown, lo: number, hi: number, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < lo || n > hi) {
    throw new UsageError(`${command}: --${name} must be an integer in ${lo}..${hi}, got ${String(value)}`);
  }
  return n;
}

/** The value of --name as a finite number in [lo, hi], or `fallback` when absent. */
export function numberIn(command: string, name: string, value: unknown, lo: number, hi: number, fallback: number): number {
  if (value === undefined) return fallback;
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  if (!Number.isFinite(n) || n < lo || n > hi) {
    throw new UsageError(`${command}: --${name} must be a number in ${lo}..${hi}, got ${String(value)}`);
  }
  return n;
}

/**
 * The value of --name as a whole number in 1..hi, or `fallback` when absent; throws a UsageError
 * naming the flag for 0, a negative, fractional or non-numeric value, or one above `hi`.
 */
export function wholeNumber(command: string, name: string, value: unknown, hi: number, fallback: number): number {
  if (value === undefined) return fallback;
  const n = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > hi) {
    throw new UsageError(`${command}: --${name} must be a whole number from 1 to ${hi}, got ${String(value)}`);
  }
  return n;
}

const BYTE_UNITS: Record<string, number> = { '': 1, B: 1, K: 1e3, KB: 1e3, M: 1e6, MB: 1e6, G: 1e9, GB: 1e9, T: 1e12, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40 };

/** The value of --name as a whole number of bytes ≥ lo (a number with an optional unit: 512M, 4GB, 2.5GiB), or undefined when absent. */
export function bytesFlag(command: string, name: string, value: unknown, lo: number): number | undefined {
  if (value === undefined) return undefined;
  const m = typeof value === 'string' ? /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$/i.exec(value) : null;
  const unit = m ? BYTE_UNITS[m[2].toUpperCase()] : undefined;
  const n = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
  if (!(Number.isSafeInteger(n) && n >= lo)) {
    throw new UsageError(`${command}: --${name} must be a number of bytes ≥ ${lo}, with an optional unit (K, M, G, T, KiB, MiB, GiB, TiB), got ${String(value)}`);
  }
  return n;
}
