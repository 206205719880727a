// `ebserve check-config [--policy FILE] [--profile FILE]` — validates a policy and a profile
// without serving: every problem is printed with the file, the field and what was expected, and
// the exit code is 1. On success it shows what the policy does to the profile's model, layer by
// layer (group, floor, ceiling). Defaults: policies/u-shape.yaml and profiles/cpu.yaml.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { ConfigError } from '../control/config-file.js';
import { loadPolicy, resolvePolicy, type Policy } from '../control/policy.js';
import { loadProfile } from '../control/profile.js';
import { dropInput } from '../control/index.js';
import { parse } from './args.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEFAULT_POLICY = path.join(ROOT, 'policies', 'u-shape.yaml');
export const DEFAULT_PROFILE = path.join(ROOT, 'profiles', 'cpu.yaml');
/** The embedded model's measured profile (cpu.yaml's settings and ebserve profile's sensitivity): serve's default for it. */
export const EMBEDDED_PROFILE = path.join(ROOT, 'profiles', 'tiny-moe.yaml');

export const usage = `usage: ebserve check-config [--policy FILE] [--profile FILE]
  --policy FILE    a policy (default policies/u-shape.yaml)
  --profile FILE   a profile (default profiles/cpu.yaml)`;

export async function checkConfigCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('check-config', argv, {
    policy: { type: 'string' },
    profile: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  const policyFile = (values.policy as string | undefined) ?? DEFAULT_POLICY;
  const profileFile = (values.profile as string | undefined) ?? DEFAULT_PROFILE;
  const problems: string[] = [];
  let policy: Policy | undefined;
  try {
    policy = loadPolicy(policyFile);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(e.message);
  }
  let profile;
  try {
    profile = loadProfile(profileFile);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(e.message);
  }
  const s = profile?.sensitivity;
  if (policy && s) {
    const same = s.bound_mode === policy.ladder.bound_mode && s.exact === policy.ladder.exact && s.bounds.join() === policy.ladder.bounds.join();
    if (!same) problems.push(`${profileFile}: sensitivity: expected the ladder of ${policyFile} (${policy.ladder.bounds.join(', ')} ${policy.ladder.bound_mode}), got ${s.bounds.join(', ')} ${s.bound_mode}`);
  }
  // Drop rungs the policy allows need the profile's measurement of them, every layer's (as serve
  // would refuse them); top-k is not known here, so trim is checked as a top-k ≥ 2 model offers it.
  const drops = policy && (['trim', 'skip_moe'] as const).filter((k) => policy!.drop?.[k]);
  if (policy && profile && drops && drops.length) {
    try {
      dropInput(policy, profile, s?.layers.length ?? 0, 2);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      problems.push(e.message);
    }
  }
  if (problems.length) {
    process.stderr.write(`${problems.join('\n')}\n`);
    return 1;
  }
  const layers = s?.layers.length;
  console.log(`${policyFile}: ok (policy ${policy!.name}: ${policy!.ladder.bounds.length} rungs, ${policy!.ladder.bound_mode}${policy!.ladder.exact ? ' + exact' : ''}${drops && drops.length ? `; drop rungs allowed past the loosest level: ${drops.join(', ')}` : ''})`);
  console.log(`${profileFile}: ok (profile ${profile!.name}: SLA p95 ${profile!.sla.p95_inter_token_seconds} s, link ${profile!.link.emulated ? `EMULATED at ${profile!.link.emulated.bytes_per_second} B/s` : `prior ${profile!.link.prior_bytes_per_second} B/s`}${s ? `, measured sensitivity of ${layers} layers` : ', no measured sensitivity: the policy\'s priors apply'})`);
  if (layers) {
    const r = resolvePolicy(policy!, layers);
    for (let l = 0; l < layers; l++) console.log(`  layer ${l}: ${r.group[l]}, levels ${r.floor[l]}..${r.ceiling[l]}`);
  }
  return 0;
}
