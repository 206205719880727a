// stream_format: the byte layout of a compressed stream (src/codec/FORMAT.md), its header and
// rung table, and the one validator every reader goes through. The CPU codec, the emulated
// kernels and the CUDA host code all build and read streams with these functions, so a stream
// means the same thing on every path.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../../cuda/eb_block.cuh"

namespace eb {

enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2 };
enum class BoundMode : uint8_t { Abs = 0, Rel = 1, Sigma = 2 };

inline size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

// A stream that is damaged, forged or asked to do what it cannot. `code` is one of the names in
// FORMAT.md (BAD_MAGIC, TRUNCATED, CHECKSUM, ...); the message says what and where.
struct CodecError : std::runtime_error {
  std::string code;
  CodecError(std::string c, const std::string& msg) : std::runtime_error(msg), code(std::move(c)) {}
};

constexpr size_t kHeaderBytes = 64;
constexpr size_t kRungEntryBytes = 24;
// Version 1 knows the fixed-length coder only; version 2 adds the entropy coder (mode 1). Writers
// stamp the lowest version that describes the stream, so fixed-length streams stay version 1,
// byte for byte what older readers read.
constexpr uint16_t kVersion = 1;
constexpr uint16_t kVersionEntropy = 2;
constexpr uint8_t kModeFixed = 0;
constexpr uint8_t kModeEntropy = 1;
// Rung 0 of an entropy-coded stream opens with this many bytes of coder descriptor.
constexpr size_t kEntropyDescriptorBytes = 8;
constexpr uint64_t kMaxCount = 0xFFFFFFFFull;
// Blocks per chunk: the unit of parallel work, and the stride of the offsets the validator keeps.
constexpr uint32_t kChunkBlocks = 2048;

struct Header {
  uint16_t version = kVersion;  // what the stream says (parse); write_head derives it from mode
  DType dtype = DType::F32;
  uint8_t mode = kModeFixed;
  uint64_t count = 0;
  double eb = 0;  // finest absolute bound, an f32 value
  uint8_t rungs = 1;
  BoundMode bound_mode = BoundMode::Abs;
  double bound_param = 0;
  uint64_t escapes = 0;
  uint64_t payload_bytes = 0;
  uint8_t cut[EB_MAX_RUNGS] = {0};
  uint32_t rung_crc[EB_MAX_RUNGS] = {0};
  uint64_t rung_offset[EB_MAX_RUNGS] = {0};
  uint64_t rung_bytes[EB_MAX_RUNGS] = {0};

  uint64_t blocks() const { return (count + EB_BLOCK - 1) / EB_BLOCK; }
  size_t head_bytes() const { return kHeaderBytes + kRungEntryBytes * rungs; }
};

inline uint64_t pad4(uint64_t v) { return (v + 3) & ~uint64_t(3); }

// Writes header + rung table (head_bytes() bytes, header CRC included) to dst.
void write_head(const Header& h, uint8_t* dst);

// Where an entropy-coded stream's parts are (FORMAT.md, "Entropy-coded rungs"). Segments are
// kChunkBlocks blocks of 32-lane rANS each: the unit of parallel decode.
struct EntropyLayout {
  uint8_t raw_planes = 0;          // t: planes below the coded part, stored raw in rung 0
  uint16_t symbols = 0;            // S: the frequency table's length
  uint16_t freq[256] = {0};        // freq[0..S), summing to 4096 (empty when count is 0)
  const uint8_t* seg_words = nullptr;  // u32 per segment: its u16 words
  std::vector<uint64_t> seg_at;    // byte offset of each segment within rung 0 (+1 entry: the end)
  const uint8_t* raw0 = nullptr;   // rung 0's raw planes: t u32 words per block
  uint8_t coded_shift(const Header& h) const { return (uint8_t)(h.cut[0] + raw_planes); }  // c
};

// Which coders a reader walks. Readers that index fixed-length blocks themselves (the fused
// product, the CUDA kernels and their emulation) take FixedOnly: an entropy-coded stream is then
// refused with BAD_MODE instead of being walked as blocks it does not have.
enum class Readable { FixedOnly, AnyCoder };

// A validated stream: header, where each available rung's bytes are, and, every kChunkBlocks
// blocks, the byte offset of that block in each rung (so chunks decode independently).
struct StreamView {
  Header h;
  int available = 0;  // rungs 0..available-1 are present
  const uint8_t* rung[EB_MAX_RUNGS] = {nullptr};
  const uint8_t* rates = nullptr;
  const uint8_t* escapes = nullptr;    // E entries of (u32 index, u32 f32 bits)
  std::vector<uint64_t> chunk_offset;  // [chunk * rungs + j], relative to the rung's block words
  uint64_t words0_offset = 0;          // where rung 0's block words start within rung 0
  EntropyLayout entropy;               // mode 1 only; rates and chunk_offset are then unset
};

// Parses the header and rung table only (checks every field of both). `len` bytes at `head`.
Header parse_head(const uint8_t* head, size_t len, bool verify);

// Validates a whole stream held in one buffer. Throws CodecError. `threads` verify checksums.
StreamView parse_stream(const uint8_t* data, size_t len, bool verify, int threads = 1,
                        Readable readable = Readable::FixedOnly);

// Validates a stream given as its head (header + table) and rungs 0..given-1 in separate
// buffers, the way the offload store fetches them. Throws CodecError.
StreamView parse_parts(const uint8_t* head, size_t head_len, const uint8_t* const* rungs,
                       const size_t* rung_lens, int given, bool verify, int threads = 1,
                       Readable readable = Readable::FixedOnly);

// Largest f32 not above `bound` (what `eb` in a header is), or 0 when there is none.
double floor_to_f32(double bound);

}  // namespace eb
