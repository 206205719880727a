// CRC-32C (Castagnoli): the checksum of every stream header and rung (src/codec/FORMAT.md).
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise; both give the same
// value, and test/codec.format.test.ts checks the standard test vector.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace eb {
// Extends `crc` (0 for a fresh checksum) over len bytes.
uint32_t crc32c(uint32_t crc, const void* data, size_t len);
}  // namespace eb
