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
constexpr uint16_t kVersion = 1;
constexpr uint64_t kMaxCount = 0xFFFFFFFFull;
// Blocks per chunk: the unit of parallel work, and the stride of the offsets the validator keeps.
constexpr uint32_t kChunkBlocks = 2048;

struct Header {
  DType dtype = DType::F32;
  uint8_t mode = 0;
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
};

// Parses the header and rung table only (checks every field of both). `len` bytes at `head`.
Header parse_head(const uint8_t* head, size_t len, bool verify);

// Validates a whole stream held in one buffer. Throws CodecError. `threads` verify checksums.
StreamView parse_stream(const uint8_t* data, size_t len, bool verify, int threads = 1);

// Validates a stream given as its head (header + table) and rungs 0..given-1 in separate
// buffers, the way the offload store fetches them. Throws CodecError.
StreamView parse_parts(const uint8_t* head, size_t head_len, const uint8_t* const* rungs,
                       const size_t* rung_lens, int given, bool verify, int threads = 1);

// Largest f32 not above `bound` (what `eb` in a header is), or 0 when there is none.
double floor_to_f32(double bound);

}  // namespace eb
