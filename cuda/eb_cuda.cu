// eb_cuda.cu — host side of the CUDA codec: scratch, launches, CUB prefix sums, and the same
// stream layout steps as the emulation (cuda/eb_plan.h). The kernels are cuda/eb_kernels.cuh;
// src/native/emulated_codec.cc runs this exact sequence on the CPU, which is what the tests check
// on machines without a GPU.
#include "eb_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cub/device/device_scan.cuh>
#include <stdexcept>
#include <string>

#include "eb_kernels.cuh"
#include "eb_plan.h"
#include "eb_rans_kernels.cuh"
#include "eb_rans_plan.h"

namespace eb {
namespace cuda {
namespace {

std::string describe(cudaError_t e) {
  return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ", error " + std::to_string((int)e) + ")";
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA ") + what + ": " + describe(e));
}
#define EB_CUDA(call) check((call), #call)

}  // namespace

Probe probe() {
  Probe p;
  cudaRuntimeGetVersion(&p.runtime_version);
  cudaDriverGetVersion(&p.driver_version);
  cudaError_t e = cudaGetDeviceCount(&p.devices);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it, so a later call does not report it again
    p.devices = 0;
    p.error = "cudaGetDeviceCount: " + describe(e);
  } else if (p.devices == 0) {
    p.error = "cudaGetDeviceCount found no CUDA devices";
  }
  p.available = p.devices > 0;
  return p;
}

Context::Context(int device) : device_(device) {
  Probe p = probe();
  if (!p.available) throw std::runtime_error("no usable CUDA device: " + p.error);
  if (device < 0 || device >= p.devices)
    throw std::runtime_error("no usable CUDA device: device " + std::to_string(device) + " of " +
                             std::to_string(p.devices));
  EB_CUDA(cudaSetDevice(device_));
  EB_CUDA(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
}

Context::~Context() {
  // Errors are ignored: at process exit the runtime may already be gone.
  cudaSetDevice(device_);
  for (Buf* b : {&rates_, &counts_, &offs_, &temp_, &payload_, &comp_, &input_, &output_, &status_})
    if (b->p) cudaFree(b->p);
  if (own_stream_) cudaStreamDestroy(own_stream_);
}

void* Context::grow(Buf& b, size_t bytes) {
  if (bytes <= b.cap) return b.p;
  // Work already queued may still use the old buffer; growth is rare (a bigger tensor), so wait.
  EB_CUDA(cudaDeviceSynchronize());
  if (b.p) EB_CUDA(cudaFree(b.p));
  b.p = nullptr;
  b.cap = 0;
  size_t cap = (bytes + 0xFFFF) & ~(size_t)0xFFFF;  // 64 KiB steps: fewer regrowths of near sizes
  EB_CUDA(cudaMalloc(&b.p, cap));
  b.cap = cap;
  return b.p;
}

// Exclusive sums of `rows` count rows of `pitch` u32 each (cuda/eb_kernels.cuh says why u32 holds).
void Context::exclusive_sums(const uint32_t* in, uint32_t* out, int rows, uint64_t pitch, cudaStream_t stream) {
  size_t need = 0;
  EB_CUDA(cub::DeviceScan::ExclusiveSum(nullptr, need, in, out, (int)pitch, stream));
  void* tmp = grow(temp_, std::max<size_t>(need, 1));
  for (int r = 0; r < rows; r++)
    EB_CUDA(cub::DeviceScan::ExclusiveSum(tmp, need, in + r * pitch, out + r * pitch, (int)pitch, stream));
}

std::vector<uint8_t> Context::compress(const void* d_in, size_t n, const EncodeParams& p, cudaStream_t stream) {
  check_encode(n, p);
  EB_CUDA(cudaSetDevice(device_));
  double ebv;
  if (p.mode == BoundMode::Abs || n == 0) {
    ebv = resolve_bound(nullptr, n, p);  // an absolute bound reads no values
  } else {
    std::vector<uint8_t> host(n * dtype_size(p.dtype));
    EB_CUDA(cudaMemcpyAsync(host.data(), d_in, host.size(), cudaMemcpyDeviceToHost, stream));
    EB_CUDA(cudaStreamSynchronize(stream));
    ebv = resolve_bound(host.data(), n, p);
  }
  Header h = begin_header(n, p, ebv);
  const int R = h.rungs;
  const EbLadder L = eb_ladder(h.cut, R);
  const float inv2eb = (float)(0.5 / h.eb), ebf = (float)h.eb;
  const uint64_t nb = h.blocks(), pitch = nb + 1;
  const size_t row_bytes = (R + 1) * pitch * sizeof(uint32_t);

  // Pass 1: rates and counts, then their offsets, then the totals that size the stream.
  auto* rates = static_cast<uint8_t*>(grow(rates_, std::max<uint64_t>(nb, 1)));
  auto* counts = static_cast<uint32_t*>(grow(counts_, row_bytes));
  auto* offs = static_cast<uint32_t*>(grow(offs_, row_bytes));
  eb_gpu::eb_scan_kernel<<<eb_grid_blocks(nb + 1), EB_THREADS, 0, stream>>>(
      d_in, (int)h.dtype, n, nb, inv2eb, ebf, L, rates, counts, pitch);
  EB_CUDA(cudaGetLastError());
  exclusive_sums(counts, offs, R + 1, pitch, stream);
  uint32_t totals[EB_MAX_RUNGS + 1];
  EB_CUDA(cudaMemcpy2DAsync(totals, sizeof(uint32_t), offs + nb, pitch * sizeof(uint32_t), sizeof(uint32_t), R + 1,
                            cudaMemcpyDeviceToHost, stream));
  EB_CUDA(cudaStreamSynchronize(stream));
  lay_out(h, totals);

  // Pass 2: the payload on the device (rate bytes, zero padding, escapes, words), then home.
  auto* payload = static_cast<uint8_t*>(grow(payload_, std::max<uint64_t>(h.payload_bytes, 4)));
  if (nb) EB_CUDA(cudaMemcpyAsync(payload, rates, nb, cudaMemcpyDeviceToDevice, stream));
  if (pad4(nb) > nb) EB_CUDA(cudaMemsetAsync(payload + nb, 0, pad4(nb) - nb, stream));
  if (nb) {
    EbRungPtrs words;
    for (int j = 0; j < R; j++) words.p[j] = payload + block_words_at(h, j);
    eb_gpu::eb_write_kernel<<<eb_grid_blocks(nb), EB_THREADS, 0, stream>>>(
        d_in, (int)h.dtype, n, nb, inv2eb, ebf, L, offs, pitch, words, payload + pad4(nb));
    EB_CUDA(cudaGetLastError());
  }
  std::vector<uint8_t> out(h.head_bytes() + h.payload_bytes);
  EB_CUDA(cudaMemcpyAsync(out.data() + h.head_bytes(), payload, h.payload_bytes, cudaMemcpyDeviceToHost, stream));
  EB_CUDA(cudaStreamSynchronize(stream));
  finish_stream(h, out.data());
  return out;
}

namespace {
void check_rung(const StreamView& s, int k) {
  if (k < 0 || k >= s.available)
    throw CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(k) + " from " +
                                      std::to_string(s.available) + " rungs");
}
}  // namespace

void Context::decompress(const StreamView& s, int k, DType out_dtype, void* d_out, cudaStream_t stream) {
  check_rung(s, k);
  EB_CUDA(cudaSetDevice(device_));
  const Header& h = s.h;

  // Rungs 0..k sit back to back in payload order on the device, whatever buffers they came in.
  uint64_t bytes = h.rung_offset[k] + h.rung_bytes[k];
  auto* comp = static_cast<uint8_t*>(grow(comp_, std::max<uint64_t>(bytes, 4)));
  const uint8_t* d_rung[EB_MAX_RUNGS] = {nullptr};
  for (int j = 0; j <= k; j++) {
    d_rung[j] = comp + h.rung_offset[j];
    if (h.rung_bytes[j])
      EB_CUDA(cudaMemcpyAsync(comp + h.rung_offset[j], s.rung[j], h.rung_bytes[j], cudaMemcpyHostToDevice, stream));
  }
  // Same stream: the kernels run after the copies without an event.
  decompress_resident(s, d_rung, k, out_dtype, d_out, stream);
}

void Context::decompress_resident(const StreamView& s, const uint8_t* const* d_rung, int k, DType out_dtype,
                                  void* d_out, cudaStream_t stream) {
  check_rung(s, k);
  EB_CUDA(cudaSetDevice(device_));
  if (s.h.mode == kModeEntropy) return decompress_entropy(s, d_rung, k, out_dtype, d_out, stream);
  const Header& h = s.h;
  const EbLadder L = eb_ladder(h.cut, h.rungs);
  const uint64_t nb = h.blocks(), pitch = nb + 1;
  const int rows = k + 1;
  // Rung 0 starts with the rate bytes, then their zero padding and the escapes (FORMAT.md).
  const uint8_t* rates = d_rung[0];

  auto* counts = static_cast<uint32_t*>(grow(counts_, rows * pitch * sizeof(uint32_t)));
  auto* offs = static_cast<uint32_t*>(grow(offs_, rows * pitch * sizeof(uint32_t)));
  eb_gpu::eb_rate_words_kernel<<<eb_grid_blocks(nb + 1), EB_THREADS, 0, stream>>>(rates, nb, L, rows, counts, pitch);
  EB_CUDA(cudaGetLastError());
  exclusive_sums(counts, offs, rows, pitch, stream);
  if (nb) {
    EbRungSrc words;
    for (int j = 0; j < rows; j++) words.p[j] = d_rung[j] + (j == 0 ? s.words0_offset : 0);
    eb_gpu::eb_decode_kernel<<<eb_grid_blocks(nb), EB_THREADS, 0, stream>>>(
        rates, h.count, nb, L, k, (float)h.eb, words, offs, pitch, d_out, (int)out_dtype);
    EB_CUDA(cudaGetLastError());
  }
  if (h.escapes) {
    eb_gpu::eb_patch_kernel<<<eb_grid_blocks(h.escapes), EB_THREADS, 0, stream>>>(
        rates + pad4(nb), h.escapes, d_out, (int)out_dtype);
    EB_CUDA(cudaGetLastError());
  }
}

// Entropy-coded streams (cuda/eb_rans_kernels.cuh): one warp per segment, then the escapes, then
// the kernel's per-segment verdict, which needs the stream to get there (eb_cuda.h says so).
void Context::decompress_entropy(const StreamView& s, const uint8_t* const* d_rung, int k, DType out_dtype,
                                 void* d_out, cudaStream_t stream) {
  const Header& h = s.h;
  const uint64_t segs = rans_segments(h);
  if (!segs) return;
  auto* status = static_cast<uint32_t*>(grow(status_, segs * sizeof(uint32_t)));
  const EbRansArgs a = rans_decode_args(s, d_rung, k, out_dtype, d_out, status);
  eb_gpu::eb_rans_decode_kernel<<<eb_rans_grid_blocks(segs), EB_RANS_THREADS, 0, stream>>>(a);
  EB_CUDA(cudaGetLastError());
  if (h.escapes) {
    eb_gpu::eb_patch_kernel<<<eb_grid_blocks(h.escapes), EB_THREADS, 0, stream>>>(
        d_rung[0] + rans_escapes_at(s), h.escapes, d_out, (int)out_dtype);
    EB_CUDA(cudaGetLastError());
  }
  std::vector<uint32_t> verdict(segs);
  EB_CUDA(cudaMemcpyAsync(verdict.data(), status, segs * sizeof(uint32_t), cudaMemcpyDeviceToHost, stream));
  EB_CUDA(cudaStreamSynchronize(stream));
  rans_check_lanes(verdict.data(), segs);
}

std::vector<uint8_t> Context::compress_host(const void* h_in, size_t n, const EncodeParams& p) {
  check_encode(n, p);  // before sizing a device buffer from n
  size_t bytes = n * dtype_size(p.dtype);
  void* d_in = grow(input_, std::max<size_t>(bytes, 4));
  if (bytes) EB_CUDA(cudaMemcpyAsync(d_in, h_in, bytes, cudaMemcpyHostToDevice, own_stream_));
  return compress(d_in, n, p, own_stream_);
}

void Context::decompress_to_host(const StreamView& s, int k, DType out_dtype, void* h_out) {
  size_t bytes = s.h.count * dtype_size(out_dtype);
  void* d_out = grow(output_, std::max<size_t>(bytes, 4));
  decompress(s, k, out_dtype, d_out, own_stream_);
  if (bytes) EB_CUDA(cudaMemcpyAsync(h_out, d_out, bytes, cudaMemcpyDeviceToHost, own_stream_));
  EB_CUDA(cudaStreamSynchronize(own_stream_));
}

}  // namespace cuda
}  // namespace eb
