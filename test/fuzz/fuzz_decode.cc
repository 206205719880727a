// fuzz_decode: a long, deterministic fuzz run of the stream validator and decoder.
//
// Built by `make fuzz` with AddressSanitizer and UBSan, linked straight against codec_cpu.cc,
// stream_format.cc and crc32c.cc. It encodes a set of valid seed streams, then feeds the validator
// (parse_stream, and parse_parts on the stream cut into head and rungs) damaged and forged copies:
// truncations, bit flips, byte overwrites, inserted and removed bytes, trailing garbage, forged
// header, rung-table and payload fields (half of them with the checksums recomputed, so the
// structural checks are what must catch them), and rung buffers of the wrong length. Every case runs
// with verify = true and verify = false. A stream that validates is decoded at every available rung
// into buffers of exactly `count` elements (f32, f16, bf16).
//
// What counts as a failure:
//   - anything thrown that is not a CodecError, a CodecError whose code is not one of FORMAT.md's,
//     or a sanitizer report / crash / hang (the process dies and prints the case it was running);
//   - with verify = true, a stream whose bytes differ from its seed that validates (unless it is a
//     forgery with recomputed checksums that FORMAT.md allows, e.g. another valid eb), or an
//     unchanged stream that does not;
//   - a forged field answered with a code that does not name it (BAD_MAGIC for a wrong magic, ...);
//   - with verify = false, a stream whose only damage is in what checksums alone protect (a CRC
//     field, escape bits, bit-plane words) that is refused;
//   - a stream accepted with only informational fields changed that decodes to other values.
//
// Usage: fuzz_decode [cases=200000] [seed] [--case I] [--dump DIR] [--verbose] [--encode-empty]
//                    [--strict-checksum]
//   --encode-empty: make the n = 0 seeds with eb::encode (UBSan reports a null memcpy source there).
//   --strict-checksum: with verify = true, damage to rung bytes alone must be answered CHECKSUM (as
//   FORMAT.md's field order has it), not BAD_RATE / BAD_PADDING / BAD_ESCAPES / BAD_RUNG.
//   Case I of a run depends only on (seed, I): `--case I` replays it alone, `--dump DIR` writes the
//   case's bytes (and, for split cases, its parts) to DIR.
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <float.h>
#include <map>
#include <memory>
#include <string>
#include <vector>

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define HAVE_SANITIZER_CALLBACK 1
#endif
#endif

#include "../../src/native/codec_cpu.h"
#include "../../src/native/crc32c.h"
#include "../../src/native/stream_format.h"
#include "../../cuda/eb_rans.cuh"
// Seeds of both coders: fixed-length (mode 0, version 1) and entropy-coded (mode 1, version 2:
// rANS lanes, frequency table, segment table, raw planes). Every reader here takes either coder
// (Readable::AnyCoder, as the CPU decoder does); a v2 stream that validates but whose lanes do not
// end where the encoder started them is answered BAD_LANES by the decoder, which counts as a
// refusal, not a failure, unless the stream must decode to its seed's values.

using eb::CodecError;
using eb::DType;

namespace {

// ---------------------------------------------------------------------------------------------
// Deterministic PRNG (splitmix64): case i of a run is seeded from (run seed, i) alone.

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  int64_t range(int64_t lo, int64_t hi) { return lo + (int64_t)below((uint64_t)(hi - lo + 1)); }
  bool coin() { return next() & 1; }
  bool chance(double p) { return (double)(next() >> 11) * 0x1.0p-53 < p; }
  double unit() { return (double)(next() >> 11) * 0x1.0p-53; }
};

uint64_t mix(uint64_t a, uint64_t b) {
  Rng r(a ^ (b * 0xD1B54A32D192ED03ull));
  r.next();
  return r.next();
}

// ---------------------------------------------------------------------------------------------
// FORMAT.md's error codes.

const char* const kCodes[] = {"TRUNCATED",  "BAD_MAGIC",   "BAD_VERSION", "BAD_DTYPE",      "BAD_MODE",
                              "BAD_COUNT",  "BAD_BOUND",   "BAD_BLOCK",   "BAD_RUNGS",      "BAD_BOUND_MODE",
                              "BAD_RESERVED", "BAD_ESCAPES", "BAD_LENGTH", "CHECKSUM",       "BAD_RUNG",
                              "BAD_RATE",   "BAD_PADDING", "BAD_TABLE",   "BAD_LANES"};
constexpr int kNumCodes = sizeof kCodes / sizeof kCodes[0];
using CodeSet = uint32_t;
constexpr CodeSet kAll = (1u << kNumCodes) - 1;

int code_index(const std::string& c) {
  for (int i = 0; i < kNumCodes; i++)
    if (c == kCodes[i]) return i;
  return -1;
}
CodeSet C(const char* c) {
  int i = code_index(c);
  if (i < 0) {
    fprintf(stderr, "fuzz: internal: unknown code %s\n", c);
    abort();
  }
  return 1u << i;
}
std::string set_str(CodeSet s) {
  if (s == kAll) return "any";
  std::string o;
  for (int i = 0; i < kNumCodes; i++)
    if (s & (1u << i)) o += (o.empty() ? "" : "|") + std::string(kCodes[i]);
  return o.empty() ? "none" : o;
}

// ---------------------------------------------------------------------------------------------
// Little-endian field access on a byte vector.

template <typename T>
T rd(const std::vector<uint8_t>& b, size_t at) {
  T v;
  memcpy(&v, b.data() + at, sizeof v);
  return v;
}
template <typename T>
void wr(std::vector<uint8_t>& b, size_t at, T v) {
  memcpy(b.data() + at, &v, sizeof v);
}

// A buffer that is its own heap allocation of exactly its length, so ASan sees any read past it.
struct Exact {
  std::unique_ptr<uint8_t[]> p;
  size_t n = 0;
  Exact() = default;
  Exact(const uint8_t* src, size_t len) : p(len ? new uint8_t[len] : nullptr), n(len) {
    if (len) memcpy(p.get(), src, len);
  }
  explicit Exact(const std::vector<uint8_t>& v) : Exact(v.data(), v.size()) {}
  const uint8_t* data() const { return p.get(); }
};

// ---------------------------------------------------------------------------------------------
// Seed streams.

struct Seed {
  std::string name;
  std::vector<uint8_t> bytes;
  eb::Header h;
  size_t hb = 0;                  // header + rung table bytes
  uint64_t nb = 0;                // blocks
  size_t rates_at = 0;            // absolute offsets in the stream
  size_t esc_at = 0;
  size_t words0_at = 0;
  size_t rung_at[EB_MAX_RUNGS] = {0};
  std::vector<std::vector<uint8_t>> ref[EB_MAX_RUNGS];  // [k][out dtype]: the decode of rungs 0..k
  bool big = false;               // decoded at one rung and output type per case
  double weight = 1;              // how often it is picked, relative to the others
  // Entropy-coded seeds (FORMAT.md, "Entropy-coded rungs"): where rung 0's parts are, absolute.
  bool entropy = false;
  size_t desc_at = 0, freq_at = 0, segtab_at = 0, raw_at = 0;
  int symbols = 0;
  std::vector<size_t> seg_at;       // each segment's lane states, then its words
  std::vector<uint32_t> seg_words;  // u16 words per segment
};

bool g_encode_empty = false;
bool g_strict_checksum = false;

float special(Rng& r) {
  static const uint32_t bits[] = {0x7fc00000u, 0xffc00123u, 0x7fa00001u /* signalling NaN */, 0x7f800000u,
                                  0xff800000u, 0x7f7fffffu /* FLT_MAX */};
  static const float vals[] = {1e30f, -2e38f, 3e5f, 4000.0f, -8000.0f, 65504.0f, 7e4f, 1e-40f, -0.0f, 4194.3f};
  size_t nb = sizeof bits / sizeof bits[0], nv = sizeof vals / sizeof vals[0];
  size_t i = r.below(nb + nv);
  if (i < nb) {
    float f;
    memcpy(&f, &bits[i], 4);
    return f;
  }
  return vals[i - nb];
}

std::vector<float> seed_values(size_t n, Rng& r, bool zeros, bool wide) {
  std::vector<float> x(n, 0.0f);
  if (zeros) return x;
  if (wide) {  // values across the quantizer's whole range at 1e-3: most blocks at rate 22
    for (size_t i = 0; i < n; i++) x[i] = (float)((r.unit() - 0.5) * 8000.0);
    x[n / 2] = (float)NAN;
    return x;
  }
  for (size_t i = 0; i < n; i++) {
    double u = r.unit(), v = r.unit();
    if (u < 1e-12) u = 1e-12;
    x[i] = (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v) * 0.02);
    if (r.chance(0.03)) x[i] = special(r);
  }
  if (n) x[r.below(n)] = special(r);  // every nonempty seed has at least one special value
  if (n > 2) x[n - 1] = (float)NAN;   // and one in its last (partial) block
  return x;
}

Seed make_seed(const std::string& name, size_t n, DType dt, const std::vector<uint8_t>& cut, double bound,
               bool zeros, uint64_t rs, bool wide = false, uint8_t coder = eb::kModeFixed) {
  Rng r(rs);
  std::vector<float> x = seed_values(n, r, zeros, wide);
  std::vector<uint16_t> h16(n);
  const void* in = x.data();
  if (dt != DType::F32) {
    for (size_t i = 0; i < n; i++) h16[i] = dt == DType::F16 ? eb_f32_to_f16(x[i]) : eb_f32_to_bf16(x[i]);
    in = h16.data();
  }
  eb::EncodeParams p;
  p.dtype = dt;
  p.bound = bound;
  p.mode = eb::BoundMode::Abs;
  p.cut = cut;
  p.threads = 1;
  p.coder = coder;
  Seed s;
  s.name = name;
  if (n == 0 && !g_encode_empty && coder == eb::kModeFixed) {
    // eb::encode of an empty tensor passes memcpy a null source (codec_cpu.cc, `memcpy(payload,
    // rates.data(), 0)`), which UBSan reports (nonnull-attribute) and -fno-sanitize-recover makes
    // fatal: the empty seeds are written here, byte for byte what encode writes (FORMAT.md: n = 0,
    // payload 0, every rung empty, the CRC of no bytes is 0). --encode-empty uses encode instead.
    eb::Header h;
    h.dtype = dt;
    h.count = 0;
    h.eb = eb::floor_to_f32(bound);
    h.rungs = (uint8_t)cut.size();
    h.bound_mode = eb::BoundMode::Abs;
    h.bound_param = bound;
    for (size_t j = 0; j < cut.size(); j++) h.cut[j] = cut[j];
    s.bytes.resize(h.head_bytes());
    eb::write_head(h, s.bytes.data());
  } else {
    s.bytes = eb::encode(in, n, p);
  }
  Exact ex(s.bytes);
  eb::StreamView v = eb::parse_stream(ex.data(), ex.n, true, 1, eb::Readable::AnyCoder);
  s.h = v.h;
  s.hb = v.h.head_bytes();
  s.nb = v.h.blocks();
  s.rates_at = s.hb;
  s.esc_at = s.hb + eb::pad4(s.nb);
  s.words0_at = s.hb + v.words0_offset;
  for (int j = 0; j < v.h.rungs; j++) s.rung_at[j] = s.hb + v.h.rung_offset[j];
  if (v.h.mode == eb::kModeEntropy) {
    const eb::EntropyLayout& L = v.entropy;
    const uint8_t* r0 = v.rung[0];
    const size_t base = s.rung_at[0];
    s.entropy = true;
    s.desc_at = base;
    s.freq_at = base + eb::kEntropyDescriptorBytes;
    s.symbols = L.symbols;
    s.esc_at = base + (size_t)(v.escapes - r0);
    s.segtab_at = base + (size_t)(L.seg_words - r0);
    for (size_t g = 0; g + 1 < L.seg_at.size(); g++) {
      s.seg_at.push_back(base + L.seg_at[g]);
      s.seg_words.push_back(rd<uint32_t>(s.bytes, s.segtab_at + 4 * g));
    }
    s.raw_at = base + (size_t)(L.raw0 - r0);
    s.words0_at = s.seg_at.empty() ? s.raw_at : s.seg_at[0];
  }
  for (int k = 0; k < v.h.rungs; k++)
    for (int d = 0; d < 3; d++) {
      std::vector<uint8_t> out(n * eb::dtype_size((DType)d));
      eb::decode(v, k, (DType)d, out.data(), 1);
      s.ref[k].push_back(std::move(out));
    }
  return s;
}

std::vector<Seed> make_seeds() {
  std::vector<Seed> seeds;
  const char* dn[] = {"f32", "f16", "bf16"};
  uint64_t rs = 1;
  for (size_t n : {0, 1, 31, 33, 1000, 5000})
    for (int d = 0; d < 3; d++)
      for (int ladder = 0; ladder < 2; ladder++) {
        std::vector<uint8_t> cut = ladder ? std::vector<uint8_t>{3, 2, 1, 0} : std::vector<uint8_t>{0};
        seeds.push_back(make_seed(std::string(dn[d]) + " n=" + std::to_string(n) + (ladder ? " 4 rungs" : " 1 rung"),
                                  n, (DType)d, cut, 1e-3, false, rs++));
      }
  // Beyond the list: an all-zero tensor (every rate 0), a high bound where most blocks have rate 0,
  // and a tensor of two chunks (2188 blocks > kChunkBlocks) so chunk offsets are exercised.
  seeds.push_back(make_seed("f32 n=1000 zeros 4 rungs", 1000, DType::F32, {3, 2, 1, 0}, 1e-3, true, rs++));
  seeds.push_back(make_seed("bf16 n=1000 bound 0.05 1 rung", 1000, DType::BF16, {0}, 0.05, false, rs++));
  Seed big = make_seed("f32 n=70000 4 rungs", 70000, DType::F32, {3, 2, 1, 0}, 1e-3, false, rs++);
  big.big = true;
  big.weight = 0.25;
  seeds.push_back(std::move(big));
  // Rung 0 over 2 MiB, so checksums verified with 2..4 threads are computed in segments and
  // combined (crc32c_parallel); the seed is encoded with one thread. Rare: each case costs ~0.1 s.
  Seed huge = make_seed("f32 n=800000 wide 1 rung", 800000, DType::F32, {0}, 1e-3, false, rs++, true);
  huge.big = true;
  huge.weight = 0.1;
  seeds.push_back(std::move(huge));
  // Entropy-coded (v2) seeds: empty, tiny, one segment, with escapes (every nonempty seed has
  // specials), ladders whose refinement rungs are raw planes, raw planes in rung 0 (a bound fine
  // enough that u would not fit a byte), and two segments.
  const DType edt[] = {DType::F32, DType::BF16};
  for (size_t n : {0, 1, 33, 1000, 5000})
    for (DType d : edt)
      for (int ladder = 0; ladder < 2; ladder++) {
        std::vector<uint8_t> cut = ladder ? std::vector<uint8_t>{3, 2, 1, 0} : std::vector<uint8_t>{0};
        seeds.push_back(make_seed(std::string("v2 ") + dn[(int)d] + " n=" + std::to_string(n) + (ladder ? " 4 rungs" : " 1 rung"),
                                  n, d, cut, 1e-3, false, rs++, false, eb::kModeEntropy));
      }
  seeds.push_back(make_seed("v2 f32 n=5000 raw planes 2 rungs", 5000, DType::F32, {1, 0}, 2e-5, false, rs++, false, eb::kModeEntropy));
  seeds.push_back(make_seed("v2 f32 n=1000 zeros 1 rung", 1000, DType::F32, {0}, 1e-3, true, rs++, false, eb::kModeEntropy));
  Seed big2 = make_seed("v2 f32 n=70000 4 rungs", 70000, DType::F32, {3, 2, 1, 0}, 1e-3, false, rs++, false, eb::kModeEntropy);
  big2.big = true;
  big2.weight = 0.25;
  seeds.push_back(std::move(big2));
  return seeds;
}

// ---------------------------------------------------------------------------------------------
// Checksums, recomputed after a forgery.

// Recomputes every rung's CRC whose table entry points inside the stream, then the header CRC.
void fix_crcs(std::vector<uint8_t>& m, bool rungs_too) {
  if (m.size() < eb::kHeaderBytes) return;
  int R = m[28];
  size_t table = std::min<size_t>((size_t)R, (m.size() - eb::kHeaderBytes) / eb::kRungEntryBytes);
  size_t hb = eb::kHeaderBytes + eb::kRungEntryBytes * (size_t)R;
  if (rungs_too && R >= 1 && R <= EB_MAX_RUNGS && m.size() >= hb)
    for (int j = 0; j < R; j++) {
      size_t e = eb::kHeaderBytes + eb::kRungEntryBytes * j;
      uint64_t off = rd<uint64_t>(m, e + 8), len = rd<uint64_t>(m, e + 16);
      if (off <= m.size() - hb && len <= m.size() - hb - off)
        wr<uint32_t>(m, e + 4, eb::crc32c(0, m.data() + hb + off, len));
    }
  uint32_t c = eb::crc32c(0, m.data(), 56);
  c = eb::crc32c(c, m.data() + eb::kHeaderBytes, eb::kRungEntryBytes * table);
  wr<uint32_t>(m, 56, c);
}

// ---------------------------------------------------------------------------------------------
// A case: the bytes, and what the validator must answer.

enum Outcome { MUST_THROW, MAY_ACCEPT, MUST_ACCEPT };
const char* outcome_str(Outcome o) { return o == MUST_THROW ? "must throw" : o == MAY_ACCEPT ? "may validate" : "must validate"; }

struct Answer {
  Outcome out = MAY_ACCEPT;
  CodeSet codes = kAll;  // the codes a refusal may carry
  std::string msg;       // a substring a refusal's message must hold ("" = no check)
};

// Rung buffers handed to parse_parts in place of the stream's own (wrong lengths, fewer, more).
struct Parts {
  bool on = false;
  std::vector<uint8_t> head;
  std::vector<std::vector<uint8_t>> rungs;
  int given = 0;
  Answer ans_v, ans_nv;
};

struct Case {
  const Seed* seed = nullptr;
  std::string kind;  // counted in the summary
  std::string desc;
  std::vector<uint8_t> m;
  bool blind = true;        // damage with no checksum recomputed and no field semantics assumed
  Answer ans_v, ans_nv;     // the whole stream under verify = true / false
  bool same_values = false; // accepted: must decode to the seed's values
  Parts parts;              // set for the split-buffer cases
  int threads = 1;          // for parse_* (checksums) and decode
};

// The answers of a forged field. `where`: 0 checked before the header CRC, 1 after it (rung table,
// loosest-rung overflow), 2 in a rung's bytes (structural checks come before the rung CRC).
// `acc`: whether a stream with that field forged may still be valid (0 never, 1 maybe, 2 always).
void forged(Case& c, int where, CodeSet codes, int acc, bool recompute, const std::string& crc_msg = "header") {
  c.blind = false;
  Outcome o = acc == 0 ? MUST_THROW : acc == 1 ? MAY_ACCEPT : MUST_ACCEPT;
  c.ans_nv = {o, codes, ""};
  if (recompute) {
    c.ans_v = {o, codes, ""};
    return;
  }
  // verify = true, checksums left as they were: the damage must be refused.
  if (acc == 2) c.ans_v = {MUST_THROW, C("CHECKSUM"), crc_msg};
  else if (where == 1) c.ans_v = {MUST_THROW, C("CHECKSUM"), "header"};
  else if (acc == 1) c.ans_v = {MUST_THROW, codes | C("CHECKSUM"), ""};
  else c.ans_v = {MUST_THROW, codes, ""};
}

std::string hex(uint64_t v) {
  char b[32];
  snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
  return b;
}

// A positive normal f32 other than `not_this`, whose loosest rung (eb * 2^cut0) does not overflow.
double valid_eb(Rng& r, double not_this, int cut0) {
  for (;;) {
    float f = ldexpf(1.0f + (float)r.unit(), (int)r.range(-126, 127 - cut0 - 1));
    if (isnormal(f) && (double)f != not_this && isfinite(ldexpf(f, cut0))) return (double)f;
  }
}

// ---------------------------------------------------------------------------------------------
// Mutations.

// Offsets where a cut is most telling: inside the header, at every field, at the table, at every
// rung's start and end, at the escapes and the first block word, one byte short of the end.
std::vector<size_t> cut_points(const Seed& s) {
  std::vector<size_t> p = {0, 1, 3, 4, 6, 8, 16, 24, 28, 40, 48, 56, 60, 63, 64, 65, 64 + 23, 64 + 24};
  auto add = [&](size_t v) {
    for (size_t d : {(size_t)0, (size_t)1, (size_t)4})
      for (int sg : {-1, 1})
        if ((sg < 0 && v >= d) || sg > 0) p.push_back(sg < 0 ? v - d : v + d);
  };
  add(s.hb);
  add(s.esc_at);
  add(s.words0_at);
  for (int j = 0; j < s.h.rungs; j++) {
    add(s.rung_at[j]);
    add(s.rung_at[j] + s.h.rung_bytes[j]);
  }
  add(s.bytes.size());
  std::vector<size_t> ok;
  for (size_t v : p)
    if (v < s.bytes.size()) ok.push_back(v);
  return ok;
}

size_t pick_pos(Rng& r, const Seed& s) {
  // Half the time in the header and rung table, where every byte is a field.
  size_t n = s.bytes.size();
  if (r.coin()) return r.below(std::min(n, s.hb));
  return r.below(n);
}

void blind_answers(Case& c) {
  bool same = c.m == c.seed->bytes;
  c.ans_v = {same ? MUST_ACCEPT : MUST_THROW, kAll, ""};
  c.ans_nv = {same ? MUST_ACCEPT : MAY_ACCEPT, kAll, ""};
  c.same_values = same;
}

void mutate_blind(Case& c, Rng& r) {
  const Seed& s = *c.seed;
  std::vector<uint8_t>& m = c.m;
  int what = (int)r.below(7);
  if (what == 0) {  // truncation at a telling point, or anywhere
    std::vector<size_t> pts = cut_points(s);
    size_t at = r.coin() && !pts.empty() ? pts[r.below(pts.size())] : r.below(m.size());
    m.resize(at);
    c.kind = "truncate";
    c.desc = "truncated to " + std::to_string(at) + " of " + std::to_string(s.bytes.size()) + " bytes";
    blind_answers(c);
    c.ans_v.codes = c.ans_nv.codes = C("TRUNCATED");
    return;
  }
  if (what == 1) {  // bit flips
    int k = (int)r.range(1, 8);
    c.kind = "bitflip";
    c.desc = std::to_string(k) + " bit flips at";
    for (int i = 0; i < k; i++) {
      size_t at = pick_pos(r, s);
      int bit = (int)r.below(8);
      m[at] ^= (uint8_t)(1u << bit);
      c.desc += " " + std::to_string(at) + "." + std::to_string(bit);
    }
  } else if (what == 2) {  // byte overwrites
    int k = (int)r.range(1, 4);
    c.kind = "overwrite";
    c.desc = std::to_string(k) + " bytes overwritten:";
    for (int i = 0; i < k; i++) {
      size_t at = pick_pos(r, s);
      uint8_t v = r.coin() ? (uint8_t)r.next() : (r.coin() ? 0x00 : 0xFF);
      m[at] = v;
      c.desc += " [" + std::to_string(at) + "]=" + hex(v);
    }
  } else if (what == 3) {  // inserted bytes
    size_t at = r.coin() ? pick_pos(r, s) : r.below(m.size() + 1);
    size_t k = r.range(1, 16);
    std::vector<uint8_t> ins(k);
    for (auto& b : ins) b = r.coin() ? 0 : (uint8_t)r.next();
    m.insert(m.begin() + at, ins.begin(), ins.end());
    c.kind = "insert";
    c.desc = std::to_string(k) + " bytes inserted at " + std::to_string(at);
    blind_answers(c);
    // Past the header and table, the header is intact and only the length is wrong.
    if (at >= s.hb) c.ans_v.codes = c.ans_nv.codes = C("BAD_LENGTH");
    return;
  } else if (what == 4) {  // removed bytes
    size_t at = r.coin() ? pick_pos(r, s) : r.below(m.size());
    size_t k = std::min<size_t>(r.range(1, 16), m.size() - at);
    m.erase(m.begin() + at, m.begin() + at + k);
    c.kind = "remove";
    c.desc = std::to_string(k) + " bytes removed at " + std::to_string(at);
    blind_answers(c);
    if (at >= s.hb) c.ans_v.codes = c.ans_nv.codes = C("TRUNCATED");
    return;
  } else if (what == 5) {  // trailing garbage
    size_t k = r.range(1, 64);
    for (size_t i = 0; i < k; i++) m.push_back((uint8_t)r.next());
    c.kind = "append";
    c.desc = std::to_string(k) + " bytes appended";
    blind_answers(c);
    c.ans_v.codes = c.ans_nv.codes = C("BAD_LENGTH");
    return;
  } else {  // a burst: a run of random bytes over a random span
    size_t at = pick_pos(r, s);
    size_t k = std::min<size_t>(r.range(2, 32), m.size() - at);
    for (size_t i = 0; i < k; i++) m[at + i] = (uint8_t)r.next();
    c.kind = "burst";
    c.desc = std::to_string(k) + " random bytes at " + std::to_string(at);
  }
  blind_answers(c);
}

// A forged header field, rung-table entry or payload field (checksums recomputed half the time).
void mutate_forged(Case& c, Rng& r) {
  const Seed& s = *c.seed;
  std::vector<uint8_t>& m = c.m;
  const eb::Header& h = s.h;
  const int R = h.rungs;
  bool rc = r.coin();  // recompute the checksums
  bool rungs_rc = rc;  // payload forgeries recompute the rungs' CRCs too
  c.kind = "forge";
  auto D = [&](const std::string& d) { c.desc = d + (rc ? " (CRCs recomputed)" : " (CRCs as they were)"); };
  int what = (int)r.below(31);
  switch (what) {
    case 0: {  // magic
      uint32_t v;
      do v = (uint32_t)r.next(); while (memcmp(&v, "EBSC", 4) == 0);
      if (r.coin()) {  // one letter off
        v = rd<uint32_t>(m, 0);
        ((uint8_t*)&v)[r.below(4)] ^= (uint8_t)r.range(1, 255);
      }
      wr<uint32_t>(m, 0, v);
      D("magic " + hex(v));
      forged(c, 0, C("BAD_MAGIC"), 0, rc);
      break;
    }
    case 1: {  // version
      // Not 2: version 2 reads a fixed-length (mode 0) stream exactly as version 1 does.
      static const uint16_t vs[] = {0, 3, 4, 0x100, 0xFFFF};
      uint16_t v = vs[r.below(5)];
      wr<uint16_t>(m, 4, v);
      D("version " + std::to_string(v));
      forged(c, 0, C("BAD_VERSION"), 0, rc);
      break;
    }
    case 2: {  // dtype out of range / another valid one
      if (r.coin()) {
        uint8_t v = (uint8_t)r.range(3, 255);
        m[6] = v;
        D("dtype " + std::to_string(v));
        forged(c, 0, C("BAD_DTYPE"), 0, rc);
      } else {
        uint8_t v = (uint8_t)((m[6] + r.range(1, 2)) % 3);
        m[6] = v;
        D("dtype changed to valid " + std::to_string(v));
        forged(c, 0, 0, 2, rc);
        c.same_values = true;
      }
      break;
    }
    case 3: {  // mode
      uint8_t v = (uint8_t)r.range(1, 255);
      m[7] = v;
      D("mode " + std::to_string(v));
      forged(c, 0, C("BAD_MODE"), 0, rc);
      break;
    }
    case 4: {  // count above 2^32-1
      static const uint64_t vs[] = {1ull << 32, 1ull << 40, 1ull << 63, ~0ull, (1ull << 32) + 1000};
      uint64_t v = vs[r.below(5)];
      wr<uint64_t>(m, 8, v);
      D("count " + std::to_string(v));
      forged(c, 0, C("BAD_COUNT"), 0, rc);
      break;
    }
    case 5: {  // count changed within range
      uint64_t v;
      do {
        int k = (int)r.below(5);
        v = k == 0 ? r.below(1ull << 32) : k == 1 ? 0 : k == 2 ? h.count + r.range(1, 40) : h.count - std::min<uint64_t>(h.count, r.range(1, 40));
        if (k == 4) v = 0xFFFFFFFFull;
      } while (v == h.count);
      wr<uint64_t>(m, 8, v);
      D("count " + std::to_string(v) + " (was " + std::to_string(h.count) + ")");
      forged(c, 0, C("BAD_ESCAPES") | C("BAD_LENGTH") | C("BAD_RUNG") | C("BAD_PADDING") | C("BAD_RATE"), 1, rc);
      break;
    }
    case 6: {  // eb not a positive normal f32
      const double vs[] = {0.0, -0.0, -h.eb, NAN, INFINITY, -INFINITY, ldexp(1.0, -140) /* f32 subnormal */,
                           5e-324 /* f64 subnormal */, 0.1 /* not an f32 */, 1e39 /* above FLT_MAX */,
                           (double)FLT_MIN / 2, h.eb * (1 + 0x1p-40)};
      double v = vs[r.below(sizeof vs / sizeof vs[0])];
      wr<double>(m, 16, v);
      D("eb " + std::to_string(v));
      forged(c, 0, C("BAD_BOUND"), 0, rc);
      break;
    }
    case 7: {  // eb valid but the loosest rung overflows f32 (ladders only) / another valid eb
      if (h.cut[0] > 0 && r.coin()) {
        double v = r.coin() ? (double)FLT_MAX : ldexp(1.0, 128 - h.cut[0]);
        wr<double>(m, 16, v);
        D("eb " + std::to_string(v) + " (loosest rung overflows)");
        forged(c, 1, C("BAD_BOUND"), 0, rc);
      } else {
        double v = valid_eb(r, h.eb, h.cut[0]);
        wr<double>(m, 16, v);
        D("eb changed to valid " + std::to_string(v));
        forged(c, 0, 0, 2, rc);
      }
      break;
    }
    case 8: {  // block size
      uint32_t v;
      do v = r.coin() ? (uint32_t)r.range(0, 128) : (uint32_t)r.next(); while (v == 32);
      wr<uint32_t>(m, 24, v);
      D("block size " + std::to_string(v));
      forged(c, 0, C("BAD_BLOCK"), 0, rc);
      break;
    }
    case 9: {  // rung count 0 or > 16
      uint8_t v = r.coin() ? (r.coin() ? 0 : 17) : (uint8_t)r.range(17, 255);
      m[28] = v;
      D("rung count " + std::to_string(v));
      forged(c, 0, C("BAD_RUNGS"), 0, rc);
      break;
    }
    case 10: {  // rung count changed within 1..16
      uint8_t v;
      do v = (uint8_t)r.range(1, 16); while (v == R);
      m[28] = v;
      D("rung count " + std::to_string(v) + " (was " + std::to_string(R) + ")");
      forged(c, 1, C("TRUNCATED") | C("BAD_RESERVED") | C("BAD_RUNG") | C("BAD_LENGTH") | C("BAD_BOUND"), 0, rc);
      // The header CRC covers a table of the new length, so without recomputing it a short stream
      // can be cut short before the CRC is reached.
      if (!rc) c.ans_v.codes |= C("TRUNCATED");
      break;
    }
    case 11: {  // bound mode
      if (r.coin()) {
        uint8_t v = (uint8_t)r.range(3, 255);
        m[29] = v;
        D("bound mode " + std::to_string(v));
        forged(c, 0, C("BAD_BOUND_MODE"), 0, rc);
      } else {
        uint8_t v = (uint8_t)((m[29] + r.range(1, 2)) % 3);
        m[29] = v;
        D("bound mode changed to valid " + std::to_string(v));
        forged(c, 0, 0, 2, rc);
        c.same_values = true;
      }
      break;
    }
    case 12: {  // reserved header bytes
      size_t at = r.coin() ? 30 + r.below(2) : 60 + r.below(4);
      m[at] = (uint8_t)r.range(1, 255);
      D("reserved header byte " + std::to_string(at) + " = " + hex(m[at]));
      forged(c, 0, C("BAD_RESERVED"), 0, rc);
      break;
    }
    case 13: {  // the informational bound parameter
      uint64_t v = r.next();
      wr<uint64_t>(m, 32, v);
      D("bound parameter bits " + hex(v));
      forged(c, 1, 0, 2, rc);
      c.same_values = true;
      break;
    }
    case 14: {  // escape count above count
      uint64_t v = r.coin() ? h.count + r.range(1, 3) : (r.coin() ? ~0ull : (1ull << 40) + r.below(1000));
      wr<uint64_t>(m, 40, v);
      D("escape count " + std::to_string(v) + " (count " + std::to_string(h.count) + ")");
      forged(c, 0, C("BAD_ESCAPES"), 0, rc);
      break;
    }
    case 15: {  // escape count changed, not above count
      uint64_t v;
      do {
        int k = (int)r.below(4);
        v = k == 0 ? h.escapes + 1 : k == 1 ? h.escapes - std::min<uint64_t>(1, h.escapes) : k == 2 ? h.count : r.below(h.count + 1);
      } while (v == h.escapes && h.count > 0);
      if (v == h.escapes) v = 1;  // count 0, escapes 0: one escape is one too many
      wr<uint64_t>(m, 40, v);
      D("escape count " + std::to_string(v) + " (was " + std::to_string(h.escapes) + ", count " + std::to_string(h.count) + ")");
      if (v > h.count) {
        forged(c, 0, C("BAD_ESCAPES"), 0, rc);
        break;
      }
      // Rung 0's length no longer matches rate bytes + 8 E + words: BAD_RUNG (or BAD_LENGTH when
      // rung 0 is shorter than its rate bytes and escapes alone).
      forged(c, 1, C("BAD_RUNG") | C("BAD_LENGTH"), 0, rc);
      break;
    }
    case 16: {  // payload length
      uint64_t p = h.payload_bytes, v;
      static const int64_t ds[] = {1, -1, 4, -4, 8, -8, 1000};
      int k = (int)r.below(10);
      v = k < 7 ? p + ds[k] : k == 7 ? 0 : k == 8 ? ~0ull : (1ull << 63);
      if (v == p) v = p + 1;
      wr<uint64_t>(m, 48, v);
      D("payload length " + std::to_string(v) + " (was " + std::to_string(p) + ")");
      forged(c, 1, C("BAD_LENGTH") | C("BAD_RUNG") | C("TRUNCATED"), 0, rc);
      break;
    }
    case 17: {  // payload length and the stream's length changed together (rung table untouched)
      int64_t d = r.coin() ? 4 * r.range(1, 4) : -std::min<int64_t>((int64_t)h.rung_bytes[R - 1], 4 * r.range(1, 4));
      if (d == 0) d = 4;
      wr<uint64_t>(m, 48, h.payload_bytes + d);
      if (d > 0) m.resize(m.size() + d, 0);
      else m.resize(m.size() + d);
      D("payload length and stream length changed by " + std::to_string(d));
      forged(c, 1, C("BAD_LENGTH") | C("BAD_RUNG"), 0, rc);
      break;
    }
    case 18: {  // a rung's offset
      int j = (int)r.below(R);
      size_t e = 64 + 24 * j;
      uint64_t o = rd<uint64_t>(m, e + 8), v;
      int k = (int)r.below(4);
      do v = k == 0 ? o + 1 : k == 1 ? o - 1 : k == 2 ? r.next() : o + 4 * r.range(-4, 4); while (v == o && (k = 2));
      wr<uint64_t>(m, e + 8, v);
      D("rung " + std::to_string(j) + " offset " + std::to_string(v) + " (was " + std::to_string(o) + ")");
      forged(c, 1, C("BAD_RUNG"), 0, rc);
      break;
    }
    case 19: {  // a rung's length
      int j = (int)r.below(R);
      size_t e = 64 + 24 * j;
      uint64_t l = rd<uint64_t>(m, e + 16), v;
      int k = (int)r.below(5);
      do v = k == 0 ? l + 1 : k == 1 ? l - 1 : k == 2 ? r.next() : k == 3 ? 0 : l + 4 * r.range(-4, 4); while (v == l && (k = 2));
      wr<uint64_t>(m, e + 16, v);
      D("rung " + std::to_string(j) + " length " + std::to_string(v) + " (was " + std::to_string(l) + ")");
      forged(c, 1, C("BAD_RUNG") | C("BAD_LENGTH"), 0, rc);
      break;
    }
    case 20: {  // a rung resized consistently: table, later offsets, payload length and bytes agree
      int j = (int)r.below(R);
      int64_t words = r.range(-3, 3);
      if (words == 0) words = 1;
      int64_t d = 4 * words;
      if (d < 0 && (int64_t)h.rung_bytes[j] + d < 0) d = 4;
      size_t end = s.rung_at[j] + h.rung_bytes[j];
      if (d > 0) m.insert(m.begin() + end, (size_t)d, (uint8_t)0);
      else m.erase(m.begin() + end + d, m.begin() + end);
      wr<uint64_t>(m, 64 + 24 * j + 16, h.rung_bytes[j] + d);
      for (int i = j + 1; i < R; i++) wr<uint64_t>(m, 64 + 24 * i + 8, h.rung_offset[i] + d);
      wr<uint64_t>(m, 48, h.payload_bytes + d);
      D("rung " + std::to_string(j) + " resized by " + std::to_string(d) + " bytes, table consistent");
      // The rung no longer holds what its rate bytes call for.
      forged(c, 1, C("BAD_RUNG") | (j == 0 ? C("BAD_LENGTH") : 0), 0, rc);
      break;
    }
    case 21: {  // a rung's dropped-plane count
      int j = (int)r.below(R);
      size_t e = 64 + 24 * j;
      int k = (int)r.below(4);
      uint8_t v;
      if (k == 0) v = (uint8_t)r.range(22, 255);                       // > 21
      else if (k == 1 && j > 0) v = h.cut[j - 1];                       // not decreasing
      else if (k == 2 && j == R - 1) v = (uint8_t)r.range(1, 21);      // last rung drops planes
      else v = (uint8_t)r.range(0, 21);
      if (v == h.cut[j]) v = (uint8_t)(v + 22);
      m[e] = v;
      bool valid = v <= 21 && (j == 0 || v < h.cut[j - 1]) && (j == R - 1 ? v == 0 : v > h.cut[j + 1]);
      D("rung " + std::to_string(j) + " drops " + std::to_string(v) + " planes (was " + std::to_string(h.cut[j]) + ")");
      // A valid other ladder is refused when the rungs' sizes no longer match the rate bytes, and
      // may be accepted when they do (no block reaches the planes that moved).
      forged(c, 1, C("BAD_RUNG") | (valid ? C("BAD_BOUND") : 0), valid ? 1 : 0, rc);
      break;
    }
    case 22: {  // a rung entry's reserved bytes
      int j = (int)r.below(R);
      size_t at = 64 + 24 * j + 1 + r.below(3);
      m[at] = (uint8_t)r.range(1, 255);
      D("rung " + std::to_string(j) + " reserved byte " + std::to_string(at) + " = " + hex(m[at]));
      forged(c, 1, C("BAD_RESERVED"), 0, rc);
      break;
    }
    case 23: {  // a rung's CRC field (the header CRC recomputed or not; the rung's never)
      int j = (int)r.below(R);
      size_t at = 64 + 24 * j + 4;
      wr<uint32_t>(m, at, rd<uint32_t>(m, at) ^ (uint32_t)(1u << r.below(32)));
      rungs_rc = false;
      c.desc = "rung " + std::to_string(j) + " CRC field changed" + (rc ? " (header CRC recomputed)" : "");
      c.blind = false;
      c.ans_v = {MUST_THROW, C("CHECKSUM"), rc ? "rung " + std::to_string(j) : "header"};
      c.ans_nv = {MUST_ACCEPT, 0, ""};
      c.same_values = true;
      break;
    }
    case 24: {  // the header CRC field
      wr<uint32_t>(m, 56, rd<uint32_t>(m, 56) ^ (uint32_t)(1u << r.below(32)));
      rc = false;
      c.desc = "header CRC field changed";
      c.blind = false;
      c.ans_v = {MUST_THROW, C("CHECKSUM"), "header"};
      c.ans_nv = {MUST_ACCEPT, 0, ""};
      c.same_values = true;
      break;
    }
    case 25: {  // a rate byte above 22, or another valid rate
      if (s.nb == 0) {
        c.m[48] ^= 1;  // nothing to forge in an empty stream: damage the payload length instead
        D("payload length bit (empty stream)");
        forged(c, 1, C("BAD_LENGTH") | C("BAD_RUNG"), 0, rc);
        break;
      }
      uint64_t b = r.below(s.nb);
      uint8_t was = m[s.rates_at + b], v;
      if (r.coin()) {
        v = r.coin() ? 200 : (uint8_t)r.range(23, 255);
        m[s.rates_at + b] = v;
        D("block " + std::to_string(b) + " rate " + std::to_string(v));
        forged(c, 2, C("BAD_RATE"), 0, rc);
      } else {
        do v = (uint8_t)r.range(0, 22); while (v == was);
        m[s.rates_at + b] = v;
        D("block " + std::to_string(b) + " rate " + std::to_string(v) + " (was " + std::to_string(was) + ")");
        forged(c, 2, C("BAD_RUNG"), 0, rc);
      }
      break;
    }
    case 26: {  // padding after the rate bytes
      if (eb::pad4(s.nb) == s.nb) {  // no padding: forge a rate instead
        if (s.nb == 0) {
          m.push_back(0);
          D("one byte appended (no rate bytes to forge)");
          forged(c, 1, C("BAD_LENGTH"), 0, true);
          c.ans_v = {MUST_THROW, C("BAD_LENGTH"), ""};
          break;
        }
        m[s.rates_at + r.below(s.nb)] = 23;
        D("rate 23");
        forged(c, 2, C("BAD_RATE"), 0, rc);
        break;
      }
      size_t at = s.rates_at + s.nb + r.below(eb::pad4(s.nb) - s.nb);
      m[at] = (uint8_t)r.range(1, 255);
      D("padding byte " + std::to_string(at) + " = " + hex(m[at]));
      forged(c, 2, C("BAD_PADDING"), 0, rc);
      break;
    }
    case 27: {  // an escape's index: past the end, out of order, or still in order
      if (h.escapes == 0) {
        if (s.nb == 0) {  // an empty stream: nothing in its payload to forge; a byte appended
          m.push_back((uint8_t)r.next());
          D("empty stream, no escapes: a byte appended");
          c.blind = false;
          c.ans_v = c.ans_nv = {MUST_THROW, C("BAD_LENGTH"), ""};
          break;
        }
        m[s.rates_at] ^= 0x80;  // no escapes: rate byte 0 above 22 instead
        D("no escapes: rate byte 0 ^ 0x80");
        forged(c, 2, C("BAD_RATE"), 0, rc);
        break;
      }
      uint64_t e = r.below(h.escapes);
      size_t at = s.esc_at + 8 * e;
      uint32_t idx = rd<uint32_t>(m, at);
      uint32_t prev = e > 0 ? rd<uint32_t>(m, at - 8) : 0;
      uint32_t next = e + 1 < h.escapes ? rd<uint32_t>(m, at + 8) : (uint32_t)h.count;
      int k = (int)r.below(4);
      uint32_t v;
      if (k == 0) {
        v = (uint32_t)h.count + (uint32_t)r.below(3) + (r.coin() ? 0 : (uint32_t)r.below(1u << 31));
        if (v < h.count) v = 0xFFFFFFFFu;
        wr<uint32_t>(m, at, v);
        D("escape " + std::to_string(e) + " index " + std::to_string(v) + " past the end (count " + std::to_string(h.count) + ")");
        forged(c, 2, C("BAD_ESCAPES"), 0, rc);
      } else if (k == 1 && e > 0) {
        v = r.coin() ? prev : (uint32_t)r.below(prev + 1);
        wr<uint32_t>(m, at, v);
        D("escape " + std::to_string(e) + " index " + std::to_string(v) + " not above the previous " + std::to_string(prev));
        forged(c, 2, C("BAD_ESCAPES"), 0, rc);
      } else if (k == 2 && e + 1 < h.escapes) {
        v = next + (uint32_t)r.below(2);
        if (v >= h.count) v = next;
        wr<uint32_t>(m, at, v);
        D("escape " + std::to_string(e) + " index " + std::to_string(v) + " not below the next " + std::to_string(next));
        forged(c, 2, C("BAD_ESCAPES"), 0, rc);
      } else if (next - (e > 0 ? prev : 0) > (e > 0 ? 1u : 0u) + 1) {
        // Still strictly increasing and below count: only the CRC can tell.
        uint32_t lo = e > 0 ? prev + 1 : 0, hi = next - 1;
        do v = lo + (uint32_t)r.below(hi - lo + 1); while (v == idx && hi > lo);
        if (v == idx) v = idx == lo ? hi : lo;
        wr<uint32_t>(m, at, v);
        D("escape " + std::to_string(e) + " index " + std::to_string(idx) + " -> " + std::to_string(v) + " (still in order)");
        forged(c, 2, 0, 2, rc, "rung 0");
      } else {
        v = (uint32_t)h.count;
        wr<uint32_t>(m, at, v);
        D("escape " + std::to_string(e) + " index " + std::to_string(v) + " = count");
        forged(c, 2, C("BAD_ESCAPES"), 0, rc);
      }
      break;
    }
    case 28: {  // an escape's value bits
      if (h.escapes == 0) {
        wr<uint32_t>(m, 48, rd<uint32_t>(m, 48) + 8);
        D("no escapes: payload length + 8");
        forged(c, 1, C("BAD_LENGTH"), 0, rc);
        break;
      }
      uint64_t e = r.below(h.escapes);
      size_t at = s.esc_at + 8 * e + 4;
      wr<uint32_t>(m, at, rd<uint32_t>(m, at) ^ (uint32_t)(r.next() | 1));
      D("escape " + std::to_string(e) + " value bits changed");
      forged(c, 2, 0, 2, rc, "rung 0");
      break;
    }
    default: {  // a byte of some rung's sign or plane words
      // Rungs with words: rung 0 past its rate bytes and escapes, or any later nonempty rung.
      std::vector<std::pair<int, std::pair<size_t, size_t>>> spans;
      if (s.rung_at[0] + h.rung_bytes[0] > s.words0_at)
        spans.push_back({0, {s.words0_at, s.rung_at[0] + h.rung_bytes[0]}});
      for (int j = 1; j < R; j++)
        if (h.rung_bytes[j]) spans.push_back({j, {s.rung_at[j], s.rung_at[j] + h.rung_bytes[j]}});
      if (spans.empty()) {
        m.push_back((uint8_t)r.next());
        D("no block words: a byte appended");
        c.blind = false;
        c.ans_v = c.ans_nv = {MUST_THROW, C("BAD_LENGTH"), ""};
        break;
      }
      auto& sp = spans[r.below(spans.size())];
      int j = sp.first;
      int k = (int)r.range(1, 4);
      for (int i = 0; i < k; i++) m[sp.second.first + r.below(sp.second.second - sp.second.first)] ^= (uint8_t)r.range(1, 255);
      D(std::to_string(k) + " bytes of rung " + std::to_string(j) + "'s block words changed");
      forged(c, 2, 0, 2, rc, "rung " + std::to_string(j));
      break;
    }
  }
  if (rc) fix_crcs(m, rungs_rc);
  if (m == s.bytes) blind_answers(c);  // a forgery that changed nothing (cannot happen, but be exact)
}

// A forged field of an entropy-coded (v2) seed: header fields whose meaning the coder changes, the
// coder descriptor, the frequency table and its padding, the escapes, the segment table, lane
// states, lane words and their padding, raw planes (checksums recomputed half the time).
void mutate_forged_entropy(Case& c, Rng& r) {
  const Seed& s = *c.seed;
  std::vector<uint8_t>& m = c.m;
  const eb::Header& h = s.h;
  const int segs = (int)s.seg_at.size();
  const int p0 = h.cut[0], t = m[s.desc_at];
  bool rc = r.coin();
  c.kind = "forge v2";
  auto D = [&](const std::string& d) { c.desc = d + (rc ? " (CRCs recomputed)" : " (CRCs as they were)"); };
  const CodeSet layout = C("BAD_TABLE") | C("BAD_PADDING") | C("BAD_ESCAPES") | C("BAD_LANES") | C("BAD_RUNG");
  int what = (int)r.below(16);
  // Fields that need segments, symbols or escapes fall back to the descriptor's scale byte.
  if ((what >= 7 && what <= 13 && segs == 0) || ((what == 5 || what == 6) && s.symbols < 2) ||
      ((what == 14 || what == 15) && h.escapes == 0))
    what = 3;
  switch (what) {
    case 0: {  // version 1 (which has no mode 1), or one no reader knows
      uint16_t v = r.coin() ? 1 : (uint16_t)r.range(3, 0xFFFF);
      wr<uint16_t>(m, 4, v);
      D("version " + std::to_string(v));
      forged(c, 0, C(v == 1 ? "BAD_MODE" : "BAD_VERSION"), 0, rc);
      break;
    }
    case 1: {  // mode: unknown, or 0 (rung 0 read as rate bytes: anything but a crash)
      uint8_t v = r.coin() ? 0 : (uint8_t)r.range(2, 255);
      m[7] = v;
      D("mode " + std::to_string(v));
      if (v) forged(c, 0, C("BAD_MODE"), 0, rc);
      else forged(c, 1, kAll, 1, rc);
      break;
    }
    case 2: {  // raw planes: past plane 22, or another count (rung 0's length then disagrees)
      uint8_t v = r.coin() ? (uint8_t)r.range(EB_MAX_RATE - p0 + 1, 255) : (uint8_t)r.range(0, EB_MAX_RATE - p0);
      if (v == t) v = (uint8_t)(EB_MAX_RATE - p0 + 1);
      m[s.desc_at] = v;
      D("raw planes " + std::to_string(v) + " (was " + std::to_string(t) + ")");
      if (p0 + v > EB_MAX_RATE) forged(c, 2, C("BAD_TABLE"), 0, rc);
      else forged(c, 2, C("BAD_RUNG"), s.nb ? 0 : 2, rc, "rung 0");  // no blocks: no raw bytes either way
      break;
    }
    case 3: {  // probability scale
      uint8_t v;
      do v = (uint8_t)r.next(); while (v == EB_RANS_SCALE_BITS);
      m[s.desc_at + 1] = v;
      D("probability scale " + std::to_string(v) + " bits");
      forged(c, 2, C("BAD_TABLE"), 0, rc);
      break;
    }
    case 4: {  // symbol count: past 256, or another (the table's length and all after it move)
      uint16_t v = r.coin() ? (uint16_t)r.range(257, 0xFFFF) : (uint16_t)r.range(0, 256);
      if (v == s.symbols) v = 257;
      wr<uint16_t>(m, s.desc_at + 2, v);
      D("symbol count " + std::to_string(v) + " (was " + std::to_string(s.symbols) + ")");
      if (v > 256) forged(c, 2, C("BAD_TABLE"), 0, rc);
      else forged(c, 2, layout | C("TRUNCATED"), 1, rc);
      break;
    }
    case 5: {  // one frequency changed: the sum is no longer 4096
      int y = (int)r.below(s.symbols);
      uint16_t old = rd<uint16_t>(m, s.freq_at + 2 * y), v;
      do v = (uint16_t)(r.coin() ? old + r.range(-3, 3) : r.next()); while (v == old);
      wr<uint16_t>(m, s.freq_at + 2 * y, v);
      D("frequency of symbol " + std::to_string(y) + " " + std::to_string(v) + " (was " + std::to_string(old) + ")");
      forged(c, 2, C("BAD_TABLE"), 0, rc);
      break;
    }
    case 6: {  // two frequencies swapped: still a table, not the lanes' (BAD_LANES on decode)
      int a = (int)r.below(s.symbols), b = (int)r.below(s.symbols);
      uint16_t fa = rd<uint16_t>(m, s.freq_at + 2 * a), fb = rd<uint16_t>(m, s.freq_at + 2 * b);
      if (fa == fb) {  // no change: one frequency one more instead
        wr<uint16_t>(m, s.freq_at + 2 * a, (uint16_t)(fa + 1));
        D("frequency of symbol " + std::to_string(a) + " one more");
        forged(c, 2, C("BAD_TABLE"), 0, rc);
        break;
      }
      wr<uint16_t>(m, s.freq_at + 2 * a, fb);
      wr<uint16_t>(m, s.freq_at + 2 * b, fa);
      D("frequencies of symbols " + std::to_string(a) + " and " + std::to_string(b) + " swapped");
      bool last_zero = rd<uint16_t>(m, s.freq_at + 2 * (s.symbols - 1)) == 0;
      if (last_zero) forged(c, 2, C("BAD_TABLE"), 0, rc);
      else forged(c, 2, 0, 2, rc, "rung 0");  // a table, but not the lanes': BAD_LANES on decode
      break;
    }
    case 7: {  // segment count
      uint32_t v;
      do v = r.coin() ? (uint32_t)(segs + r.range(-1, 2)) : (uint32_t)r.next(); while (v == (uint32_t)segs);
      wr<uint32_t>(m, s.desc_at + 4, v);
      D("segment count " + std::to_string(v) + " (was " + std::to_string(segs) + ")");
      forged(c, 2, C("BAD_TABLE"), 0, rc);
      break;
    }
    case 8: {  // a segment's word count: more than its values, or another (the segments move)
      int g = (int)r.below(segs);
      uint64_t values = std::min<uint64_t>((uint64_t)eb::kChunkBlocks * EB_BLOCK, h.count - (uint64_t)g * eb::kChunkBlocks * EB_BLOCK);
      uint32_t w = s.seg_words[g], v;
      if (r.coin()) {
        v = (uint32_t)(values + r.range(1, 1000));
      } else {
        v = (uint32_t)std::max<int64_t>(0, (int64_t)w + (r.coin() ? 1 : -1) * r.range(1, 4));
        if (v == w) v = w + 1;
      }
      wr<uint32_t>(m, s.segtab_at + 4 * g, v);
      D("segment " + std::to_string(g) + " words " + std::to_string(v) + " (was " + std::to_string(w) + ")");
      if (v > values) forged(c, 2, C("BAD_LANES"), 0, rc);
      else forged(c, 2, C("BAD_RUNG") | C("BAD_LANES") | C("BAD_PADDING"), 1, rc);  // same padded size: BAD_LANES on decode
      break;
    }
    case 9: {  // a lane state below 2^16
      int g = (int)r.below(segs), j = (int)r.below(EB_RANS_LANES);
      uint32_t v = (uint32_t)r.below(EB_RANS_L);
      wr<uint32_t>(m, s.seg_at[g] + 4 * j, v);
      D("segment " + std::to_string(g) + " lane " + std::to_string(j) + " state " + std::to_string(v));
      forged(c, 2, C("BAD_LANES"), 0, rc);
      break;
    }
    case 10:
    lane_state: {  // a lane state changed to another valid one (BAD_LANES on decode)
      int g = (int)r.below(segs), j = (int)r.below(EB_RANS_LANES);
      uint32_t old = rd<uint32_t>(m, s.seg_at[g] + 4 * j), v;
      do v = r.coin() ? old ^ (1u << r.below(32)) : (uint32_t)r.next(); while (v == old || v < EB_RANS_L);
      wr<uint32_t>(m, s.seg_at[g] + 4 * j, v);
      D("segment " + std::to_string(g) + " lane " + std::to_string(j) + " state " + hex(v) + " (was " + hex(old) + ")");
      forged(c, 2, 0, 2, rc, "rung 0");
      break;
    }
    case 11: {  // lane words: bits flipped (only the lanes' final states can tell)
      int g = (int)r.below(segs);
      if (s.seg_words[g] == 0) goto lane_state;  // a tiny segment's lanes may read no word
      int k = (int)r.range(1, 4);
      c.desc = "";
      for (int i = 0; i < k; i++) {
        size_t at = s.seg_at[g] + 4 * EB_RANS_LANES + 2 * r.below(s.seg_words[g]);
        wr<uint16_t>(m, at, rd<uint16_t>(m, at) ^ (uint16_t)(1u << r.below(16)));
        c.desc += " " + std::to_string(at);
      }
      D("segment " + std::to_string(g) + " words flipped at" + c.desc);
      forged(c, 2, 0, 2, rc, "rung 0");
      if (m == s.bytes) blind_answers(c);  // the flips undid each other
      break;
    }
    case 12: {  // padding: after an odd segment's words, or after an odd-length frequency table
      int g = (int)r.below(segs);
      if (s.seg_words[g] & 1) {
        wr<uint16_t>(m, s.seg_at[g] + 4 * EB_RANS_LANES + 2 * s.seg_words[g], (uint16_t)r.range(1, 0xFFFF));
        D("segment " + std::to_string(g) + " padding word");
        forged(c, 2, C("BAD_PADDING"), 0, rc);
      } else if (s.symbols & 1) {
        wr<uint16_t>(m, s.freq_at + 2 * s.symbols, (uint16_t)r.range(1, 0xFFFF));
        D("frequency table padding");
        forged(c, 2, C("BAD_PADDING"), 0, rc);
      } else {
        size_t at = s.seg_at[g] + r.below(4 * EB_RANS_LANES);
        m[at] ^= (uint8_t)r.range(1, 255);
        D("segment " + std::to_string(g) + " lane state byte " + std::to_string(at));
        forged(c, 2, C("BAD_LANES"), 1, rc, "rung 0");
      }
      break;
    }
    case 13: {  // raw planes (rung 0's or a refinement rung's): values change, structure does not
      size_t lo = s.raw_at, hi = s.rung_at[0] + h.rung_bytes[0];
      if (h.rungs > 1 && r.coin()) {
        int j = (int)r.range(1, h.rungs - 1);
        lo = s.rung_at[j];
        hi = lo + h.rung_bytes[j];
      }
      if (hi <= lo) {
        m[s.desc_at + 1] ^= 1;
        D("probability scale (no raw planes to damage)");
        forged(c, 2, C("BAD_TABLE"), 0, rc);
        break;
      }
      size_t at = lo + r.below(hi - lo);
      m[at] ^= (uint8_t)r.range(1, 255);
      D("raw plane byte " + std::to_string(at));
      forged(c, 2, 0, 2, rc, "rung");
      break;
    }
    case 14: {  // an escape's index: past the end, or out of order
      uint64_t e = r.below(h.escapes);
      uint32_t v = r.coin() ? (uint32_t)(h.count + r.below(1000)) : (e > 0 ? rd<uint32_t>(m, s.esc_at + 8 * (e - 1)) : (uint32_t)h.count);
      wr<uint32_t>(m, s.esc_at + 8 * e, v);
      D("escape " + std::to_string(e) + " index " + std::to_string(v));
      forged(c, 2, C("BAD_ESCAPES"), 0, rc);
      break;
    }
    default: {  // an escape's bits: another value, exactly kept
      uint64_t e = r.below(h.escapes);
      wr<uint32_t>(m, s.esc_at + 8 * e + 4, rd<uint32_t>(m, s.esc_at + 8 * e + 4) ^ (uint32_t)r.range(1, 0xFFFFFFFF));
      D("escape " + std::to_string(e) + " bits");
      forged(c, 2, 0, 2, rc, "rung 0");
      break;
    }
  }
  if (rc) fix_crcs(m, true);
}

// Rung buffers of the wrong length, fewer or more rungs than the stream has, a short head.
void mutate_parts(Case& c, Rng& r) {
  const Seed& s = *c.seed;
  const int R = s.h.rungs;
  c.kind = "parts";
  blind_answers(c);  // the whole stream is the seed's
  Parts& p = c.parts;
  p.on = true;
  p.head.assign(s.bytes.begin(), s.bytes.begin() + s.hb);
  for (int j = 0; j < R; j++)
    p.rungs.emplace_back(s.bytes.begin() + s.rung_at[j], s.bytes.begin() + s.rung_at[j] + s.h.rung_bytes[j]);
  p.given = R;
  int what = (int)r.below(5);
  if (what == 0) {  // one rung's buffer too short or too long; rungs before it right
    int j = (int)r.below(R);
    p.given = (int)r.range(j + 1, R);
    bool shorter = r.coin() && !p.rungs[j].empty();
    size_t d = r.range(1, 9);
    if (shorter) p.rungs[j].resize(p.rungs[j].size() - std::min(d, p.rungs[j].size()));
    else for (size_t i = 0; i < d; i++) p.rungs[j].push_back((uint8_t)r.next());
    p.rungs.resize(p.given);
    c.desc = "rung " + std::to_string(j) + " buffer " + (shorter ? "short" : "long") + " by " + std::to_string(d) +
             ", " + std::to_string(p.given) + " rungs given";
    p.ans_v = p.ans_nv = {MUST_THROW, C(shorter ? "TRUNCATED" : "BAD_LENGTH"), "rung " + std::to_string(j)};
  } else if (what == 1) {  // fewer rungs than the stream has: valid
    p.given = (int)r.range(1, R);
    p.rungs.resize(p.given);
    c.desc = std::to_string(p.given) + " of " + std::to_string(R) + " rungs given";
    p.ans_v = p.ans_nv = {MUST_ACCEPT, 0, ""};
  } else if (what == 2) {  // none, or more than the stream has
    if (r.coin()) {
      p.given = 0;
      p.rungs.clear();
    } else {
      p.given = R + (int)r.range(1, 3);
      while ((int)p.rungs.size() < p.given) p.rungs.push_back(p.rungs.back());
    }
    c.desc = std::to_string(p.given) + " rungs given, the stream has " + std::to_string(R);
    p.ans_v = p.ans_nv = {MUST_THROW, C("BAD_RUNGS"), ""};
  } else if (what == 3) {  // the head cut short
    size_t at = r.below(s.hb);
    p.head.resize(at);
    p.given = (int)r.range(1, R);
    p.rungs.resize(p.given);
    c.desc = "head cut to " + std::to_string(at) + " of " + std::to_string(s.hb) + " bytes";
    p.ans_v = p.ans_nv = {MUST_THROW, C("TRUNCATED"), ""};
  } else {  // rungs handed over in the wrong order (swap two of the same length is no damage)
    if (R < 2) {
      p.rungs[0].push_back(0);
      c.desc = "rung 0 buffer long by 1 (one-rung stream)";
      p.ans_v = p.ans_nv = {MUST_THROW, C("BAD_LENGTH"), "rung 0"};
    } else {
      int a = (int)r.below(R - 1), b = a + 1;
      std::swap(p.rungs[a], p.rungs[b]);
      c.desc = "rungs " + std::to_string(a) + " and " + std::to_string(b) + " swapped";
      bool same = p.rungs[a] == p.rungs[b];
      if (same) p.ans_v = p.ans_nv = {MUST_ACCEPT, 0, ""};
      else if (p.rungs[a].size() != p.rungs[b].size()) {
        // The first wrong length names the problem.
        bool shorter = p.rungs[a].size() < s.h.rung_bytes[a];
        p.ans_v = p.ans_nv = {MUST_THROW, C(shorter ? "TRUNCATED" : "BAD_LENGTH"), "rung " + std::to_string(a)};
      } else if (a == 0) {
        // Rung 1's bytes read as rung 0's rate bytes and escapes: the structure checks see it.
        p.ans_v = {MUST_THROW, kAll, ""};
        p.ans_nv = {MAY_ACCEPT, kAll, ""};
      } else {
        // Only rung 0 and the table carry structure: just the checksum can tell.
        p.ans_v = {MUST_THROW, C("CHECKSUM"), "rung " + std::to_string(a)};
        p.ans_nv = {MUST_ACCEPT, 0, ""};
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Running a case.

struct Stats {
  uint64_t cases = 0, failures = 0, decodes = 0;
  std::map<std::string, uint64_t> rej_v, rej_nv, rej_parts;
  uint64_t acc_v = 0, acc_nv = 0, acc_parts = 0;
  uint64_t segmented_crc = 0;  // cases on a rung over 2 MiB checked with 2+ threads
  uint64_t v2_cases = 0;       // cases on an entropy-coded seed
  uint64_t lanes_refused = 0;  // validated v2 decodes refused with BAD_LANES (damaged lanes)
  std::map<std::string, uint64_t> kinds;
  // Blind payload damage under verify = true: what named it (a design observation, not a check).
  std::map<std::string, uint64_t> payload_damage_v, payload_damage_blind_v;
};

// The case being run, for the crash, sanitizer and watchdog handlers.
char g_current[2048] = "(none)";

void on_death() {
  fprintf(stderr, "\nfuzz: died while running %s\n", g_current);
}
void on_signal(int sig) {
  const char* what = sig == SIGALRM ? "\nfuzz: HANG (case ran over its time limit) while running " : "\nfuzz: signal while running ";
  (void)!write(2, what, strlen(what));
  (void)!write(2, g_current, strlen(g_current));
  (void)!write(2, "\n", 1);
  _exit(sig == SIGALRM ? 3 : 4);
}

struct Result {
  bool accepted = false;
  bool other = false;  // something other than a CodecError
  std::string code, msg;
  eb::StreamView view;
};

template <typename F>
Result attempt(F&& f) {
  Result r;
  try {
    r.view = f();
    r.accepted = true;
  } catch (const CodecError& e) {
    r.code = e.code;
    r.msg = e.what();
  } catch (const std::exception& e) {
    r.other = true;
    r.code = "(std::exception)";
    r.msg = e.what();
  } catch (...) {
    r.other = true;
    r.code = "(unknown exception)";
  }
  return r;
}

class Runner {
 public:
  Runner(const std::vector<Seed>& seeds, uint64_t seed, bool verbose) : seeds_(seeds), seed_(seed), verbose_(verbose) {}
  Stats st;

  Case make(uint64_t i) {
    Rng r(mix(seed_, i));
    // The big seeds are picked less often: each costs as much as all the others together. Every
    // other case or so is on an entropy-coded seed, so a default run mutates >= 100,000 of them.
    const bool v2 = r.chance(0.55);
    size_t si;
    do si = r.below(seeds_.size()); while (seeds_[si].entropy != v2 || !r.chance(seeds_[si].weight));
    Case c;
    c.seed = &seeds_[si];
    c.threads = (int)r.range(1, 4);
    c.m = c.seed->bytes;
    double u = r.unit();
    if (u < 0.45) mutate_blind(c, r);
    else if (u < 0.92) (v2 ? mutate_forged_entropy : mutate_forged)(c, r);
    else mutate_parts(c, r);
    return c;
  }

  void run(uint64_t i, const char* dump_dir) {
    Case c = make(i);
    snprintf(g_current, sizeof g_current, "case %llu (seed %llu): %s: %s [%s, %d threads]", (unsigned long long)i,
             (unsigned long long)seed_, c.seed->name.c_str(), c.desc.c_str(), c.kind.c_str(), c.threads);
    if (verbose_) fprintf(stderr, "%s\n", g_current);
    if (dump_dir) dump(c, dump_dir);
    st.cases++;
    st.kinds[c.kind]++;
    st.v2_cases += c.seed->entropy;
    if (c.threads > 1 && c.seed->h.rung_bytes[0] >= (2u << 20)) st.segmented_crc++;
    case_failed_ = false;
    Exact whole(c.m);
    for (int verify = 1; verify >= 0; verify--) {
      const Answer& a = verify ? c.ans_v : c.ans_nv;
      Result res = attempt([&] { return eb::parse_stream(whole.data(), whole.n, verify, c.threads, eb::Readable::AnyCoder); });
      judge(c, res, a, verify ? "parse_stream verify=true" : "parse_stream verify=false");
      if (res.accepted) {
        (verify ? st.acc_v : st.acc_nv)++;
        decode_all(c, res.view, verify ? "whole verify=true" : "whole verify=false");
      } else {
        (verify ? st.rej_v : st.rej_nv)[res.code]++;
      }
      if (verify && !c.parts.on && c.m != c.seed->bytes && !res.accepted) {
        // Damage to rung bytes alone (header and table intact, so no checksum was recomputed):
        // how it is named under verify = true. FORMAT.md lists each rung's CRC (in the rung table)
        // before the rungs' contents; --strict-checksum holds the validator to that order.
        bool payload_only = c.m.size() == c.seed->bytes.size() &&
                            memcmp(c.m.data(), c.seed->bytes.data(), c.seed->hb) == 0;
        if (payload_only) {
          st.payload_damage_v[res.code]++;
          if (c.blind) st.payload_damage_blind_v[res.code]++;
          if (g_strict_checksum && res.code != "CHECKSUM")
            fail(c, "parse_stream verify=true: damaged rung bytes answered " + res.code + " (" + res.msg +
                        "), not CHECKSUM (--strict-checksum)");
        }
      }
    }
    if (c.parts.on) run_given_parts(c);
    else run_split(c, Rng(mix(seed_ ^ 0xABCDEFull, i)));
    if (case_failed_) st.failures++;
  }

 private:
  const std::vector<Seed>& seeds_;
  uint64_t seed_;
  bool verbose_;
  bool case_failed_ = false;
  int reported_ = 0;

  void fail(const Case& c, const std::string& what) {
    case_failed_ = true;
    if (reported_++ >= 40) return;
    fprintf(stderr, "FAIL %s\n     %s\n", g_current, what.c_str());
    // The bytes that differ from the seed (a reproducer without the program).
    const std::vector<uint8_t>& a = c.seed->bytes;
    const std::vector<uint8_t>& b = c.m;
    std::string d;
    int shown = 0;
    for (size_t k = 0; k < std::min(a.size(), b.size()) && shown < 24; k++)
      if (a[k] != b[k]) {
        char t[48];
        snprintf(t, sizeof t, " [%zu] %02x->%02x", k, a[k], b[k]);
        d += t;
        shown++;
      }
    fprintf(stderr, "     length %zu (seed %zu); differs at:%s%s\n", b.size(), a.size(), d.empty() ? " (nowhere in the common prefix)" : d.c_str(),
            shown >= 24 ? " ..." : "");
  }

  void judge(const Case& c, const Result& res, const Answer& a, const std::string& where) {
    if (res.other) {
      fail(c, where + ": threw " + res.code + " (not a CodecError): " + res.msg);
      return;
    }
    if (!res.accepted && code_index(res.code) < 0) {
      fail(c, where + ": CodecError with code " + res.code + ", which FORMAT.md does not define: " + res.msg);
      return;
    }
    if (res.accepted && a.out == MUST_THROW) {
      fail(c, where + ": validated, but " + outcome_str(a.out) + " (" + set_str(a.codes) + ")");
      return;
    }
    if (!res.accepted && a.out == MUST_ACCEPT) {
      fail(c, where + ": refused with " + res.code + " (" + res.msg + "), but " + outcome_str(a.out));
      return;
    }
    if (!res.accepted && !(a.codes & (1u << code_index(res.code)))) {
      fail(c, where + ": refused with " + res.code + " (" + res.msg + "); expected " + set_str(a.codes));
      return;
    }
    if (!res.accepted && !a.msg.empty() && res.msg.find(a.msg) == std::string::npos)
      fail(c, where + ": " + res.code + " message \"" + res.msg + "\" does not name \"" + a.msg + "\"");
  }

  // Decodes a validated view at every available rung into exact-size buffers, in every output type.
  void decode_all(const Case& c, const eb::StreamView& v, const std::string& where) {
    uint64_t n = v.h.count;
    if (n > (1ull << 26)) {
      fail(c, where + ": validated a stream of " + std::to_string(n) + " values from " + std::to_string(c.m.size()) + " bytes");
      return;
    }
    int threads = c.threads;
    Rng pick(mix(n, c.m.size()));
    for (int k = 0; k < v.available; k++)
      for (int d = 0; d < 3; d++) {
        if (c.seed->big && (k != (int)pick.below(v.available) || d != (int)pick.below(3))) continue;
        size_t bytes = n * eb::dtype_size((DType)d);
        Exact exact;  // exactly `bytes` long (a zero-length decode gets no buffer at all)
        exact.p.reset(bytes ? new uint8_t[bytes] : nullptr);
        exact.n = bytes;
        try {
          eb::decode(v, k, (DType)d, exact.p.get(), threads);
          st.decodes++;
        } catch (const CodecError& e) {
          // Lanes the checksums did not protect (verify = false, or forged with CRCs recomputed):
          // the decoder's own check, unless the stream must decode to its seed's values.
          if (v.h.mode == eb::kModeEntropy && e.code == "BAD_LANES" && !c.same_values) {
            st.lanes_refused++;
            continue;
          }
          fail(c, where + ": decode of rung " + std::to_string(k) + " threw " + e.code + ": " + e.what());
          continue;
        } catch (const std::exception& e) {
          fail(c, where + ": decode of rung " + std::to_string(k) + " threw " + e.what());
          continue;
        }
        if (c.same_values && bytes && memcmp(exact.data(), c.seed->ref[k][d].data(), bytes) != 0)
          fail(c, where + ": decodes rung " + std::to_string(k) + " (out dtype " + std::to_string(d) +
                      ") to other values than the seed, with only informational fields changed");
      }
    // Rungs that are not there are refused, not read.
    for (int k : {-1, v.available}) {
      std::vector<uint8_t> buf(std::max<uint64_t>(n, 1) * 4);
      try {
        eb::decode(v, k, DType::F32, buf.data(), 1);
        fail(c, where + ": decode of missing rung " + std::to_string(k) + " did not throw");
      } catch (const CodecError& e) {
        if (e.code != "BAD_RUNGS") fail(c, where + ": decode of missing rung " + std::to_string(k) + " threw " + e.code);
      }
    }
  }

  Result parts_attempt(const std::vector<uint8_t>& head, const std::vector<std::vector<uint8_t>>& rungs, int given,
                       bool verify, std::vector<Exact>& keep, int threads) {
    keep.clear();
    keep.emplace_back(head);
    for (auto& b : rungs) keep.emplace_back(b);
    std::vector<const uint8_t*> ptr;
    std::vector<size_t> len;
    for (size_t j = 1; j < keep.size(); j++) {
      ptr.push_back(keep[j].data());
      len.push_back(keep[j].n);
    }
    return attempt([&] {
      return eb::parse_parts(keep[0].data(), keep[0].n, ptr.empty() ? nullptr : ptr.data(),
                             len.empty() ? nullptr : len.data(), given, verify, threads, eb::Readable::AnyCoder);
    });
  }

  void run_given_parts(const Case& c) {
    const Parts& p = c.parts;
    for (int verify = 1; verify >= 0; verify--) {
      std::vector<Exact> keep;
      Result res = parts_attempt(p.head, p.rungs, p.given, verify, keep, c.threads);
      judge(c, res, verify ? p.ans_v : p.ans_nv, verify ? "parse_parts verify=true" : "parse_parts verify=false");
      if (res.accepted) {
        st.acc_parts++;
        if (res.view.available != p.given) fail(c, "parse_parts: available " + std::to_string(res.view.available) + " rungs, given " + std::to_string(p.given));
        Case cc = c;
        cc.same_values = p.ans_v.out == MUST_ACCEPT;  // fewer rungs of the seed: the seed's values
        decode_all(cc, res.view, verify ? "parts verify=true" : "parts verify=false");
      } else {
        st.rej_parts[res.code]++;
      }
    }
  }

  // The mutated stream cut at the seed's rung boundaries (clipped to what is there), each part in
  // its own buffer, with all rungs or fewer.
  void run_split(const Case& c, Rng r) {
    const Seed& s = *c.seed;
    const int R = s.h.rungs;
    auto clip = [&](size_t a, size_t b) {
      a = std::min(a, c.m.size());
      b = std::min(b, c.m.size());
      return std::vector<uint8_t>(c.m.begin() + a, c.m.begin() + b);
    };
    std::vector<uint8_t> head = clip(0, s.hb);
    std::vector<std::vector<uint8_t>> rungs;
    for (int j = 0; j < R; j++) rungs.push_back(clip(s.rung_at[j], s.rung_at[j] + s.h.rung_bytes[j]));
    int given = r.coin() ? R : (int)r.range(1, R);
    rungs.resize(given);
    bool changed = head != std::vector<uint8_t>(s.bytes.begin(), s.bytes.begin() + s.hb);
    for (int j = 0; j < given; j++)
      changed |= rungs[j] != std::vector<uint8_t>(s.bytes.begin() + s.rung_at[j], s.bytes.begin() + s.rung_at[j] + s.h.rung_bytes[j]);
    for (int verify = 1; verify >= 0; verify--) {
      std::vector<Exact> keep;
      Result res = parts_attempt(head, rungs, given, verify, keep, c.threads);
      Answer a;
      if (c.blind) {
        // Exact: with checksums verified, the parts are refused if and only if one of them changed.
        a.out = !changed ? MUST_ACCEPT : verify ? MUST_THROW : MAY_ACCEPT;
      }  // forgeries: any FORMAT.md code, or valid; never a crash
      judge(c, res, a, std::string("parse_parts (split at the seed's rungs, ") + std::to_string(given) + " given) verify=" + (verify ? "true" : "false"));
      if (res.accepted) {
        st.acc_parts++;
        Case cc = c;
        cc.same_values = c.blind ? !changed : c.same_values;
        decode_all(cc, res.view, "split verify=" + std::string(verify ? "true" : "false"));
      } else {
        st.rej_parts[res.code]++;
      }
    }
  }

  void dump(const Case& c, const char* dir) {
    mkdir(dir, 0755);
    auto put = [&](const std::string& name, const std::vector<uint8_t>& b) {
      std::string path = std::string(dir) + "/" + name;
      FILE* f = fopen(path.c_str(), "wb");
      if (!f) return;
      if (!b.empty()) fwrite(b.data(), 1, b.size(), f);
      fclose(f);
      fprintf(stderr, "fuzz: wrote %s (%zu bytes)\n", path.c_str(), b.size());
    };
    put("stream.bin", c.m);
    put("seed.bin", c.seed->bytes);
    if (c.parts.on) {
      put("head.bin", c.parts.head);
      for (size_t j = 0; j < c.parts.rungs.size(); j++) put("rung" + std::to_string(j) + ".bin", c.parts.rungs[j]);
    }
  }
};

std::string map_str(const std::map<std::string, uint64_t>& m) {
  std::string o = "{";
  for (auto& kv : m) o += (o.size() > 1 ? ", " : "") + kv.first + ": " + std::to_string(kv.second);
  return o + "}";
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t cases = 200000, seed = 0x5EED2024ull;
  long long only = -1;
  const char* dump_dir = nullptr;
  bool verbose = false;
  int pos = 0;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--case" && i + 1 < argc) only = atoll(argv[++i]);
    else if (a == "--dump" && i + 1 < argc) dump_dir = argv[++i];
    else if (a == "--verbose") verbose = true;
    else if (a == "--encode-empty") g_encode_empty = true;
    else if (a == "--strict-checksum") g_strict_checksum = true;
    else if (a == "-h" || a == "--help") {
      printf("usage: %s [cases=200000] [seed] [--case I] [--dump DIR] [--verbose] [--encode-empty] [--strict-checksum]\n", argv[0]);
      return 0;
    } else if (pos == 0 && !a.empty()) cases = strtoull(a.c_str(), nullptr, 0), pos++;
    else if (pos == 1 && !a.empty()) seed = strtoull(a.c_str(), nullptr, 0), pos++;
  }
#ifdef HAVE_SANITIZER_CALLBACK
  __sanitizer_set_death_callback(on_death);
#endif
  signal(SIGALRM, on_signal);
  signal(SIGSEGV, on_signal);
  signal(SIGBUS, on_signal);
  signal(SIGFPE, on_signal);
  signal(SIGILL, on_signal);
  signal(SIGABRT, on_signal);

  auto t0 = std::chrono::steady_clock::now();
  std::vector<Seed> seeds = make_seeds();
  Runner run(seeds, seed, verbose || only >= 0);
  if (only >= 0) {
    run.run((uint64_t)only, dump_dir);
  } else {
    for (uint64_t i = 0; i < cases; i++) {
      alarm(30);  // a case that runs 30 s is a hang
      run.run(i, nullptr);
      if ((i + 1) % 50000 == 0)
        fprintf(stderr, "fuzz: %llu cases, %llu failures\n", (unsigned long long)(i + 1), (unsigned long long)run.st.failures);
    }
    alarm(0);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Stats& st = run.st;
  size_t largest = 0;
  for (auto& sd : seeds) largest = std::max(largest, sd.bytes.size());
  size_t v2_seeds = 0;
  for (auto& sd : seeds) v2_seeds += sd.entropy;
  fprintf(stderr, "fuzz: %zu seed streams (%zu entropy-coded; largest %zu bytes); case kinds %s; %llu cases with segmented CRCs\n",
          seeds.size(), v2_seeds, largest, map_str(st.kinds).c_str(), (unsigned long long)st.segmented_crc);
  fprintf(stderr, "fuzz: %llu cases on entropy-coded (v2) seeds; %llu validated v2 decodes refused BAD_LANES\n",
          (unsigned long long)st.v2_cases, (unsigned long long)st.lanes_refused);
  fprintf(stderr, "fuzz: verify=false: %llu accepted, rejected %s\n", (unsigned long long)st.acc_nv, map_str(st.rej_nv).c_str());
  fprintf(stderr, "fuzz: parse_parts: %llu accepted, rejected %s; %llu decodes checked\n", (unsigned long long)st.acc_parts,
          map_str(st.rej_parts).c_str(), (unsigned long long)st.decodes);
  fprintf(stderr, "fuzz: damage to rung bytes only (header intact), verify=true, was named %s; of it blind damage %s\n",
          map_str(st.payload_damage_v).c_str(), map_str(st.payload_damage_blind_v).c_str());
  printf("fuzz: %llu cases, seed %llu, %llu failures; rejected: %s; accepted: %llu (verify=true); %.1f s\n",
         (unsigned long long)st.cases, (unsigned long long)seed, (unsigned long long)st.failures, map_str(st.rej_v).c_str(),
         (unsigned long long)st.acc_v, secs);
  return st.failures ? 1 : 0;
}
