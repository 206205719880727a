#include "crc32c.h"

#include <string.h>

#include <algorithm>
#include <vector>

#include "parallel.h"

namespace eb {
namespace {

struct Table {
  uint32_t t[256];
  Table() {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  }
};

uint32_t crc_table(uint32_t c, const uint8_t* p, size_t n) {
  static const Table table;
  while (n--) c = table.t[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

__attribute__((target("sse4.2"))) uint32_t crc_hw(uint32_t c, const uint8_t* p, size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    n -= 8;
  }
  c = (uint32_t)c64;
  while (n--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t len) {
  static const bool hw = __builtin_cpu_supports("sse4.2");
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  c = hw ? crc_hw(c, p, len) : crc_table(c, p, len);
  return ~c;
}

namespace {

// Multiplication by a 32x32 matrix over GF(2): the operator "append zero bits" on a CRC.
uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, mat++)
    if (vec & 1) sum ^= *mat;
  return sum;
}

void gf2_square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}

}  // namespace

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b) {
  if (len_b == 0) return crc_a;
  uint32_t even[32], odd[32];
  odd[0] = 0x82F63B78u;  // the operator for one zero bit
  for (int n = 1; n < 32; n++) odd[n] = 1u << (n - 1);
  gf2_square(even, odd);  // two zero bits
  gf2_square(odd, even);  // four
  do {                    // apply len_b zero bytes to crc_a, squaring up the operator
    gf2_square(even, odd);
    if (len_b & 1) crc_a = gf2_times(even, crc_a);
    len_b >>= 1;
    if (!len_b) break;
    gf2_square(odd, even);
    if (len_b & 1) crc_a = gf2_times(odd, crc_a);
    len_b >>= 1;
  } while (len_b);
  return crc_a ^ crc_b;
}

uint32_t crc32c_parallel(const void* data, size_t len, int threads) {
  const size_t min_segment = 1 << 20;  // below this a thread costs more than it saves
  int parts = (int)std::min<size_t>((size_t)std::max(threads, 1), std::max<size_t>(len / min_segment, 1));
  if (parts <= 1) return crc32c(0, data, len);
  const uint8_t* p = static_cast<const uint8_t*>(data);
  size_t seg = len / parts;
  std::vector<uint32_t> crc(parts);
  parallel_for(parts, parts, [&](int i) {
    size_t a = i * seg, b = i == parts - 1 ? len : a + seg;
    crc[i] = crc32c(0, p + a, b - a);
  });
  uint32_t c = crc[0];
  for (int i = 1; i < parts; i++) c = crc32c_combine(c, crc[i], (i == parts - 1 ? len : (i + 1) * seg) - i * seg);
  return c;
}

}  // namespace eb
