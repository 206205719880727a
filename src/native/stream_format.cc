#include "stream_format.h"

#include <math.h>
#include <string.h>

#include <algorithm>

#include "../../cuda/eb_rans.cuh"
#include "crc32c.h"
#include "parallel.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "streams are little-endian");

namespace eb {
namespace {

template <typename T>
T rd(const uint8_t* p) {
  T v;
  memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void wr(uint8_t* p, T v) {
  memcpy(p, &v, sizeof v);
}

std::string num(uint64_t v) { return std::to_string(v); }

[[noreturn]] void fail(const char* code, const std::string& msg) { throw CodecError(code, msg); }

void parse_fixed(StreamView& v, int threads);
void parse_entropy(StreamView& v, int threads);

uint32_t head_crc(const uint8_t* head, int rungs) {
  uint32_t c = crc32c(0, head, 56);
  return crc32c(c, head + kHeaderBytes, kRungEntryBytes * rungs);
}

}  // namespace

double floor_to_f32(double bound) {
  if (!(bound > 0) || !isfinite(bound)) return 0;
  float f = (float)bound;
  if ((double)f > bound) f = nextafterf(f, 0.0f);
  return (double)f;
}

void write_head(const Header& h, uint8_t* d) {
  memset(d, 0, h.head_bytes());
  memcpy(d, "EBSC", 4);
  wr<uint16_t>(d + 4, h.mode == kModeEntropy ? kVersionEntropy : kVersion);
  d[6] = (uint8_t)h.dtype;
  d[7] = h.mode;
  wr<uint64_t>(d + 8, h.count);
  wr<double>(d + 16, h.eb);
  wr<uint32_t>(d + 24, EB_BLOCK);
  d[28] = h.rungs;
  d[29] = (uint8_t)h.bound_mode;
  wr<double>(d + 32, h.bound_param);
  wr<uint64_t>(d + 40, h.escapes);
  wr<uint64_t>(d + 48, h.payload_bytes);
  for (int j = 0; j < h.rungs; j++) {
    uint8_t* e = d + kHeaderBytes + kRungEntryBytes * j;
    e[0] = h.cut[j];
    wr<uint32_t>(e + 4, h.rung_crc[j]);
    wr<uint64_t>(e + 8, h.rung_offset[j]);
    wr<uint64_t>(e + 16, h.rung_bytes[j]);
  }
  wr<uint32_t>(d + 56, head_crc(d, h.rungs));
}

Header parse_head(const uint8_t* d, size_t len, bool verify) {
  if (len < kHeaderBytes)
    fail("TRUNCATED", "stream is " + num(len) + " bytes; its header alone needs 64");
  if (memcmp(d, "EBSC", 4) != 0) fail("BAD_MAGIC", "not an ebserve codec stream (magic is not EBSC)");
  uint16_t version = rd<uint16_t>(d + 4);
  if (version != kVersion && version != kVersionEntropy)
    fail("BAD_VERSION", "stream format version " + num(version) + "; this build reads versions 1 and 2");
  Header h;
  h.version = version;
  if (d[6] > 2) fail("BAD_DTYPE", "source dtype code " + num(d[6]) + " (expected 0 f32, 1 f16, 2 bf16)");
  h.dtype = (DType)d[6];
  h.mode = d[7];
  if (version == kVersion && h.mode != kModeFixed)
    fail("BAD_MODE", "mode " + num(h.mode) + " (version 1 has only mode 0, fixed-length)");
  if (h.mode > kModeEntropy)
    fail("BAD_MODE", "mode " + num(h.mode) + " (version 2 has mode 0, fixed-length, and 1, entropy-coded)");
  h.count = rd<uint64_t>(d + 8);
  if (h.count > kMaxCount) fail("BAD_COUNT", "element count " + num(h.count) + " exceeds 2^32-1");
  h.eb = rd<double>(d + 16);
  if (!(isnormal(h.eb) && h.eb > 0 && (double)(float)h.eb == h.eb && isnormal((float)h.eb)))
    fail("BAD_BOUND", "error bound " + std::to_string(h.eb) + " is not a positive normal f32 value");
  uint32_t block = rd<uint32_t>(d + 24);
  if (block != EB_BLOCK) fail("BAD_BLOCK", "block size " + num(block) + " (expected 32)");
  h.rungs = d[28];
  if (h.rungs < 1 || h.rungs > EB_MAX_RUNGS)
    fail("BAD_RUNGS", "rung count " + num(h.rungs) + " (expected 1..16)");
  if (d[29] > 2) fail("BAD_BOUND_MODE", "bound mode code " + num(d[29]) + " (expected 0..2)");
  h.bound_mode = (BoundMode)d[29];
  if (rd<uint16_t>(d + 30) != 0 || rd<uint32_t>(d + 60) != 0)
    fail("BAD_RESERVED", "reserved header bytes are not zero");
  h.bound_param = rd<double>(d + 32);
  h.escapes = rd<uint64_t>(d + 40);
  if (h.escapes > h.count)
    fail("BAD_ESCAPES", "escape count " + num(h.escapes) + " exceeds element count " + num(h.count));
  h.payload_bytes = rd<uint64_t>(d + 48);
  if (len < h.head_bytes())
    fail("TRUNCATED", "stream is " + num(len) + " bytes; header and rung table need " + num(h.head_bytes()));
  if (verify && rd<uint32_t>(d + 56) != head_crc(d, h.rungs))
    fail("CHECKSUM", "header checksum does not match: the header or rung table is damaged");
  uint64_t at = 0;
  for (int j = 0; j < h.rungs; j++) {
    const uint8_t* e = d + kHeaderBytes + kRungEntryBytes * j;
    std::string which = "rung " + num(j) + ": ";
    h.cut[j] = e[0];
    if (e[1] || e[2] || e[3]) fail("BAD_RESERVED", which + "reserved bytes are not zero");
    if (h.cut[j] > EB_MAX_CUT) fail("BAD_RUNG", which + "drops " + num(h.cut[j]) + " planes (at most 21)");
    if (j > 0 && h.cut[j] >= h.cut[j - 1]) fail("BAD_RUNG", which + "dropped planes do not decrease");
    h.rung_crc[j] = rd<uint32_t>(e + 4);
    h.rung_offset[j] = rd<uint64_t>(e + 8);
    h.rung_bytes[j] = rd<uint64_t>(e + 16);
    if (h.rung_offset[j] != at)
      fail("BAD_RUNG", which + "starts at " + num(h.rung_offset[j]) + ", expected " + num(at));
    if (h.rung_bytes[j] > h.payload_bytes - at)
      fail("BAD_RUNG", which + "length " + num(h.rung_bytes[j]) + " runs past the payload");
    at += h.rung_bytes[j];
  }
  if (h.cut[h.rungs - 1] != 0) fail("BAD_RUNG", "the last rung must drop no planes");
  if (at != h.payload_bytes)
    fail("BAD_LENGTH", "rungs add up to " + num(at) + " bytes, payload length says " + num(h.payload_bytes));
  if (!isfinite(ldexp(h.eb, h.cut[0])) || !isfinite((float)ldexp(h.eb, h.cut[0])))
    fail("BAD_BOUND", "the loosest rung's bound overflows f32");
  return h;
}

StreamView parse_parts(const uint8_t* head, size_t head_len, const uint8_t* const* rungs,
                       const size_t* rung_lens, int given, bool verify, int threads, Readable readable) {
  StreamView v;
  v.h = parse_head(head, head_len, verify);
  const Header& h = v.h;
  if (given < 1 || given > h.rungs)
    fail("BAD_RUNGS", "given " + num(given) + " rungs; the stream has " + num(h.rungs));
  v.available = given;
  for (int j = 0; j < given; j++) {
    if (rung_lens[j] != h.rung_bytes[j])
      fail(rung_lens[j] < h.rung_bytes[j] ? "TRUNCATED" : "BAD_LENGTH",
           "rung " + num(j) + " is " + num(rung_lens[j]) + " bytes; the rung table says " + num(h.rung_bytes[j]));
    v.rung[j] = rungs[j];
  }
  if (h.mode == kModeEntropy) {
    if (readable == Readable::FixedOnly)
      fail("BAD_MODE", "the stream is entropy-coded (mode 1); this reader walks fixed-length blocks only "
                       "(decode it with the CPU decoder, or compress with the fixed coder)");
    parse_entropy(v, threads);
  } else {
    parse_fixed(v, threads);
  }
  uint64_t prev = 0;
  for (uint64_t e = 0; e < h.escapes; e++) {
    uint32_t idx = rd<uint32_t>(v.escapes + 8 * e);
    if (idx >= h.count || (e > 0 && idx <= prev))
      fail("BAD_ESCAPES", "escape " + num(e) + " has index " + num(idx) +
                              (idx >= h.count ? " past the end" : " out of order"));
    prev = idx;
  }
  if (verify)
    for (int j = 0; j < given; j++)
      if (crc32c_parallel(v.rung[j], h.rung_bytes[j], threads) != h.rung_crc[j])
        fail("CHECKSUM", "rung " + num(j) + " checksum does not match: its bytes are damaged");
  return v;
}

namespace {

// The fixed-length coder's rung 0: rate bytes, escapes, then block words that the rate bytes size.
void parse_fixed(StreamView& v, int threads) {
  const Header& h = v.h;
  uint64_t nb = h.blocks();
  uint64_t fixed0 = pad4(nb) + 8 * h.escapes;
  if (h.rung_bytes[0] < fixed0)
    fail("BAD_LENGTH", "rung 0 is " + num(h.rung_bytes[0]) + " bytes, too short for " + num(nb) +
                           " rate bytes and " + num(h.escapes) + " escapes");
  v.rates = v.rung[0];
  v.escapes = v.rung[0] + pad4(nb);
  v.words0_offset = fixed0;
  for (uint64_t i = nb; i < pad4(nb); i++)
    if (v.rates[i]) fail("BAD_PADDING", "padding after the rate bytes is not zero");

  // One pass over the rate bytes: a histogram of rates per chunk (in parallel), from which every
  // rung's words and the offsets at chunk starts follow. This pass is what makes every later read
  // provably in bounds, so it must not be the serial part of a two-thread decode.
  uint64_t chunks = (nb + kChunkBlocks - 1) / kChunkBlocks;
  v.chunk_offset.assign(chunks * h.rungs, 0);
  std::vector<uint32_t> hist(chunks * 256, 0);
  parallel_for((int)chunks, threads, [&](int c) {
    uint32_t* hc = &hist[(size_t)c * 256];
    uint64_t b1 = std::min<uint64_t>(nb, (uint64_t)(c + 1) * kChunkBlocks);
    for (uint64_t b = (uint64_t)c * kChunkBlocks; b < b1; b++) hc[v.rates[b]]++;
  });
  uint64_t words_of_rate[EB_MAX_RATE + 1][EB_MAX_RUNGS];
  for (int r = 0; r <= EB_MAX_RATE; r++)
    for (int j = 0; j < h.rungs; j++) words_of_rate[r][j] = eb_rung_words(r, j, h.cut);
  uint64_t words[EB_MAX_RUNGS] = {0};
  for (uint64_t c = 0; c < chunks; c++) {
    const uint32_t* hc = &hist[c * 256];
    for (int r = EB_MAX_RATE + 1; r < 256; r++)
      if (hc[r])
        for (uint64_t b = c * kChunkBlocks;; b++)
          if (v.rates[b] > EB_MAX_RATE) fail("BAD_RATE", "block " + num(b) + " has rate " + num(v.rates[b]) + " (at most 22)");
    for (int j = 0; j < h.rungs; j++) {
      v.chunk_offset[c * h.rungs + j] = 4 * words[j];
      for (int r = 0; r <= EB_MAX_RATE; r++) words[j] += hc[r] * words_of_rate[r][j];
    }
  }
  for (int j = 0; j < h.rungs; j++) {
    uint64_t want = 4 * words[j] + (j == 0 ? fixed0 : 0);
    if (h.rung_bytes[j] != want)
      fail("BAD_RUNG", "rung " + num(j) + " is " + num(h.rung_bytes[j]) + " bytes; its rate bytes call for " + num(want));
  }
}

// The entropy coder's rungs (FORMAT.md, "Entropy-coded rungs"): descriptor, frequency table,
// escapes, segment table, segments, raw planes; rung k > 0 holds raw planes only. Every size
// follows from the header, the descriptor and the segment table, and each is checked before
// anything is read through it.
void parse_entropy(StreamView& v, int) {
  const Header& h = v.h;
  EntropyLayout& L = v.entropy;
  const uint64_t nb = h.blocks(), segs = (nb + kChunkBlocks - 1) / kChunkBlocks;
  const uint8_t* r0 = v.rung[0];
  const uint64_t len0 = h.rung_bytes[0];
  auto need = [&](uint64_t at, uint64_t bytes, const char* what) {
    if (bytes > len0 || at > len0 - bytes)
      fail("BAD_RUNG", "rung 0 is " + num(len0) + " bytes, too short for its " + what + " (" + num(bytes) + " bytes at " + num(at) + ")");
  };
  need(0, kEntropyDescriptorBytes, "coder descriptor");
  L.raw_planes = r0[0];
  if (r0[1] != EB_RANS_SCALE_BITS)
    fail("BAD_TABLE", "probability scale of " + num(r0[1]) + " bits (expected " + num(EB_RANS_SCALE_BITS) + ")");
  if (h.cut[0] + L.raw_planes > EB_MAX_RATE)
    fail("BAD_TABLE", "rung 0 codes magnitudes above plane " + num(h.cut[0] + L.raw_planes) + " (at most " + num(EB_MAX_RATE) + ")");
  L.symbols = rd<uint16_t>(r0 + 2);
  if (L.symbols > EB_RANS_SYMBOLS) fail("BAD_TABLE", "frequency table of " + num(L.symbols) + " symbols (at most 256)");
  if (rd<uint32_t>(r0 + 4) != segs)
    fail("BAD_TABLE", "descriptor says " + num(rd<uint32_t>(r0 + 4)) + " segments; " + num(h.count) + " values make " + num(segs));
  uint64_t at = kEntropyDescriptorBytes;
  need(at, pad4(2 * (uint64_t)L.symbols), "frequency table");
  uint32_t sum = 0;
  for (int s = 0; s < L.symbols; s++) sum += (L.freq[s] = rd<uint16_t>(r0 + at + 2 * s));
  if (h.count == 0 ? L.symbols != 0 : (sum != EB_RANS_M || L.freq[L.symbols - 1] == 0))
    fail("BAD_TABLE", h.count == 0 ? "an empty tensor has no frequency table, this one has " + num(L.symbols) + " symbols"
                                   : "symbol frequencies sum to " + num(sum) + " (expected 4096), or the table ends in a zero");
  for (uint64_t i = at + 2 * (uint64_t)L.symbols; i < at + pad4(2 * (uint64_t)L.symbols); i++)
    if (r0[i]) fail("BAD_PADDING", "padding after the frequency table is not zero");
  at += pad4(2 * (uint64_t)L.symbols);
  need(at, 8 * h.escapes, "escapes");
  v.escapes = r0 + at;
  at += 8 * h.escapes;
  need(at, 4 * segs, "segment table");
  L.seg_words = r0 + at;
  at += 4 * segs;
  L.seg_at.resize(segs + 1);
  for (uint64_t g = 0; g < segs; g++) {
    uint64_t values = std::min<uint64_t>((uint64_t)kChunkBlocks * EB_BLOCK, h.count - g * kChunkBlocks * EB_BLOCK);
    uint64_t words = rd<uint32_t>(L.seg_words + 4 * g);
    // A symbol makes at most one word, so a segment has at most as many words as values.
    if (words > values)
      fail("BAD_LANES", "segment " + num(g) + " says " + num(words) + " words for " + num(values) + " values");
    uint64_t bytes = 4 * EB_RANS_LANES + pad4(2 * words);
    need(at, bytes, "segments");
    L.seg_at[g] = at;
    for (int j = 0; j < EB_RANS_LANES; j++)
      if (rd<uint32_t>(r0 + at + 4 * j) < EB_RANS_L)
        fail("BAD_LANES", "segment " + num(g) + ": lane " + num(j) + "'s final state is below 2^16");
    if (words & 1 && rd<uint16_t>(r0 + at + 4 * EB_RANS_LANES + 2 * words))
      fail("BAD_PADDING", "segment " + num(g) + ": the padding word is not zero");
    at += bytes;
  }
  L.seg_at[segs] = at;
  L.raw0 = r0 + at;
  uint64_t want0 = at + 4 * nb * L.raw_planes;
  if (len0 != want0)
    fail("BAD_RUNG", "rung 0 is " + num(len0) + " bytes; its tables call for " + num(want0));
  for (int j = 1; j < h.rungs; j++) {
    uint64_t want = 4 * nb * (uint64_t)(h.cut[j - 1] - h.cut[j]);
    if (h.rung_bytes[j] != want)
      fail("BAD_RUNG", "rung " + num(j) + " is " + num(h.rung_bytes[j]) + " bytes; " + num(nb) + " blocks of " +
                           num(h.cut[j - 1] - h.cut[j]) + " planes call for " + num(want));
  }
}

}  // namespace

StreamView parse_stream(const uint8_t* data, size_t len, bool verify, int threads, Readable readable) {
  Header h = parse_head(data, len, verify);
  uint64_t total = h.head_bytes() + h.payload_bytes;
  if (h.payload_bytes > len || len < total)
    fail("TRUNCATED", "stream is " + num(len) + " bytes; its header says " + num(total));
  if (len > total) fail("BAD_LENGTH", "stream is " + num(len) + " bytes; its header says " + num(total));
  const uint8_t* rungs[EB_MAX_RUNGS];
  size_t lens[EB_MAX_RUNGS];
  for (int j = 0; j < h.rungs; j++) {
    rungs[j] = data + h.head_bytes() + h.rung_offset[j];
    lens[j] = h.rung_bytes[j];
  }
  return parse_parts(data, len, rungs, lens, h.rungs, verify, threads, readable);
}

}  // namespace eb
