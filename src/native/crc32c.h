// CRC-32C (Castagnoli): the checksum of every stream header and rung (src/codec/FORMAT.md).
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise; both give the same
// value, and test/codec.format.test.ts checks the standard test vector.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace eb {
// Extends `crc` (0 for a fresh checksum) over len bytes.
uint32_t crc32c(uint32_t crc, const void* data, size_t len);

// The CRC of A followed by B, from crc(A), crc(B) and B's length (zlib's crc32_combine method).
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b);

// crc32c(0, data, len) computed in `threads` segments at once and combined: a checksum verified
// before a two-thread decode would otherwise be the one step that runs on one core.
uint32_t crc32c_parallel(const void* data, size_t len, int threads);
}  // namespace eb
