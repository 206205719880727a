/**
 * Reading the files users edit (policies/*.yaml, profiles/*.yaml): YAML parsed with line
 * numbers, then checked against a zod schema; anything wrong becomes one ConfigError whose
 * message names the file, the field and what was expected, e.g.
 *   policies/mine.yaml: groups.1.floor: expected one of the ladder's bounds (0.5, 0.25) or "exact", got 0.3
 */
import fs from 'node:fs';

import YAML from 'yaml';
import type { z } from 'zod';

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    /** Each problem: the field's dotted path and what is wrong with it. */
    readonly problems: { field: string; message: string }[],
  ) {
    super(problems.map((p) => `${file}: ${p.field ? `${p.field}: ` : ''}${p.message}`).join('\n'));
    this.name = 'ConfigError';
  }
}

/** Parses YAML text; a syntax error names the file and line. */
export function parseYaml(file: string, text: string): unknown {
  const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(file, doc.errors.map((e) => ({ field: '', message: `not valid YAML: ${e.message.split('\n')[0]}${e.linePos ? ` (line ${e.linePos[0].line})` : ''}` })));
  }
  return doc.toJS();
}

/** Checks `value` against `schema`; throws a ConfigError listing every problem. */
export function validate<S extends z.ZodType>(file: string, schema: S, value: unknown): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new ConfigError(
    file,
    r.error.issues.map((i) => ({
      field: i.path.map(String).join('.'),
      message: i.code === 'unrecognized_keys' ? `unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')} (a typo?)` : i.message,
    })),
  );
}

/** Reads, parses and validates a YAML file. */
export function readConfigFile<S extends z.ZodType>(file: string, schema: S): z.output<S> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ConfigError(file, [{ field: '', message: err.code === 'ENOENT' ? 'no such file' : `cannot be read (${err.message})` }]);
  }
  return validate(file, schema, parseYaml(file, text));
}
