// emulate_warp.h — warp collectives and __syncthreads for kernels run under cuda/emulate.h.
//
// Why: the entropy decode kernel (cuda/eb_rans_kernels.cuh) is one warp per 32-lane rANS segment:
// its lanes share one word stream, and a ballot gives each lane its word. That cannot run one
// thread after another (eb_emulate_launch); it needs the warp's lanes to meet at each collective.
// Here every thread of a thread block is a fiber (ucontext) on the calling host thread: a thread
// runs until it reaches a collective, then the next one runs; once every live lane of a warp (for
// __syncthreads, every live thread of the block) waits at the same collective, the scheduler
// computes each lane's result and resumes them in order. Deterministic, single-threaded, and the
// kernel's code is the CUDA code itself.
//
// What it offers: __syncthreads(), __syncwarp, __ballot_sync, __shfl_sync and __shfl_xor_sync
// (u32 and u64), __popc, and `__shared__` (a thread_local static: blocks run one after another, and a kernel
// writes its shared memory before it reads it). Masks must be full warps (0xffffffff) and every
// lane of a warp must reach the same collectives: what the kernels here do, and what CUDA asks of
// a full-mask collective. A divergent or deadlocked launch aborts with a message.
//
// Include after cuda/emulate.h, in host-compiled translation units only.
#pragma once
#if defined(__CUDACC__)
#error "cuda/emulate_warp.h is for host compilers; nvcc has the real thing"
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <memory>
#include <type_traits>
#include <vector>

#define __shared__ static thread_local

enum EbEmuWait { EB_EMU_RUN, EB_EMU_WARP, EB_EMU_BLOCK, EB_EMU_DONE };
enum EbEmuOp { EB_EMU_BALLOT, EB_EMU_SHFL, EB_EMU_SYNCWARP, EB_EMU_SYNCTHREADS };

struct EbEmuFiber {
  ucontext_t ctx;
  int wait = EB_EMU_RUN;
  int op = 0;
  uint64_t arg = 0;   // the value a lane offers (ballot: its predicate)
  uint32_t src = 0;   // shfl: the lane it reads
  uint64_t result = 0;
};

struct EbEmuBlock {
  ucontext_t sched;
  std::vector<EbEmuFiber> fiber;
  std::unique_ptr<char[]> stacks;
  size_t stack_bytes = 0;
  int current = 0;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline thread_local EbEmuBlock* eb_emu_block = nullptr;

[[noreturn]] inline void eb_emu_fatal(const char* what) {
  fprintf(stderr, "cuda/emulate_warp.h: %s\n", what);
  abort();
}

inline void eb_emu_fiber_main() {
  EbEmuBlock* B = eb_emu_block;
  B->body(B->body_arg);
  B->fiber[B->current].wait = EB_EMU_DONE;
  // Returning resumes uc_link, the scheduler's context.
}

// Called by a kernel thread: offers (arg, src) to collective `op` and sleeps until it resolves.
inline uint64_t eb_emu_collective(int op, uint64_t arg, uint32_t src) {
  EbEmuBlock* B = eb_emu_block;
  if (!B) eb_emu_fatal("a collective outside eb_emulate_launch_warps");
  EbEmuFiber& me = B->fiber[B->current];
  me.op = op;
  me.arg = arg;
  me.src = src;
  me.wait = op == EB_EMU_SYNCTHREADS ? EB_EMU_BLOCK : EB_EMU_WARP;
  swapcontext(&me.ctx, &B->sched);
  return me.result;
}

// Resolves warp w's collective once all its live lanes wait at it; returns whether it did.
inline bool eb_emu_resolve_warp(EbEmuBlock& B, int w) {
  const int lo = 32 * w, hi = lo + 32 < (int)B.fiber.size() ? lo + 32 : (int)B.fiber.size();
  int waiting = 0, live = 0, op = -1;
  for (int i = lo; i < hi; i++) {
    if (B.fiber[i].wait == EB_EMU_DONE) continue;
    live++;
    if (B.fiber[i].wait != EB_EMU_WARP) continue;
    waiting++;
    if (op >= 0 && B.fiber[i].op != op) eb_emu_fatal("lanes of a warp wait at different collectives");
    op = B.fiber[i].op;
  }
  if (!waiting || waiting != live) return false;
  if (live != hi - lo) eb_emu_fatal("a full-warp collective with exited lanes");
  uint64_t ballot = 0;
  for (int i = lo; i < hi; i++) ballot |= (uint64_t)(B.fiber[i].arg != 0) << (i - lo);
  for (int i = lo; i < hi; i++) {
    EbEmuFiber& f = B.fiber[i];
    f.result = op == EB_EMU_BALLOT ? ballot : op == EB_EMU_SHFL ? B.fiber[lo + (f.src & 31u)].arg : 0;
  }
  for (int i = lo; i < hi; i++) B.fiber[i].wait = EB_EMU_RUN;
  return true;
}

// Runs `body` (which calls the kernel) for every thread of the launch, each thread block's threads
// as fibers that meet at collectives. Blocks run in order; within a block, runnable threads in
// thread order. Threads per block: any (the warps are threads 32w .. 32w + 31 in x-major order).
template <typename Body>
void eb_emulate_launch_warps(dim3 grid, dim3 block, Body&& body) {
  gridDim = grid;
  blockDim = block;
  const int threads = (int)(block.x * block.y * block.z);
  EbEmuBlock B;
  B.fiber.resize(threads);
  B.stack_bytes = 64 * 1024;  // the kernels keep a few dozen registers' worth of locals
  B.stacks.reset(new char[(size_t)threads * B.stack_bytes]);
  using Fn = std::remove_reference_t<Body>;
  B.body = [](void* p) { (*static_cast<Fn*>(p))(); };
  B.body_arg = (void*)&body;
  EbEmuBlock* outer = eb_emu_block;
  eb_emu_block = &B;
  auto index = [&](int i) {
    return uint3{(unsigned)i % block.x, (unsigned)i / block.x % block.y, (unsigned)i / (block.x * block.y)};
  };
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        for (int i = 0; i < threads; i++) {
          EbEmuFiber& f = B.fiber[i];
          f = EbEmuFiber();
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = B.stacks.get() + (size_t)i * B.stack_bytes;
          f.ctx.uc_stack.ss_size = B.stack_bytes;
          f.ctx.uc_link = &B.sched;
          makecontext(&f.ctx, eb_emu_fiber_main, 0);
        }
        for (;;) {
          bool ran = false;
          for (int i = 0; i < threads; i++) {
            if (B.fiber[i].wait != EB_EMU_RUN) continue;
            ran = true;
            B.current = i;
            blockIdx = uint3{bx, by, bz};
            threadIdx = index(i);
            swapcontext(&B.sched, &B.fiber[i].ctx);
          }
          bool resolved = false;
          for (int w = 0; w < (threads + 31) / 32; w++) resolved |= eb_emu_resolve_warp(B, w);
          int live = 0, at_sync = 0;
          for (auto& f : B.fiber) {
            live += f.wait != EB_EMU_DONE;
            at_sync += f.wait == EB_EMU_BLOCK;
          }
          if (!live) break;
          if (at_sync && at_sync == live) {
            for (auto& f : B.fiber)
              if (f.wait == EB_EMU_BLOCK) f.wait = EB_EMU_RUN;
            resolved = true;
          }
          if (!ran && !resolved) eb_emu_fatal("deadlock: threads wait at collectives that cannot complete");
        }
      }
  eb_emu_block = outer;
}

inline void __syncthreads() { eb_emu_collective(EB_EMU_SYNCTHREADS, 0, 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) eb_emu_fatal("__syncwarp with a partial mask");
  eb_emu_collective(EB_EMU_SYNCWARP, 0, 0);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  if (mask != 0xffffffffu) eb_emu_fatal("__ballot_sync with a partial mask");
  return (unsigned)eb_emu_collective(EB_EMU_BALLOT, pred != 0, 0);
}
inline unsigned __shfl_sync(unsigned mask, unsigned v, int src) {
  if (mask != 0xffffffffu) eb_emu_fatal("__shfl_sync with a partial mask");
  return (unsigned)eb_emu_collective(EB_EMU_SHFL, v, (uint32_t)src);
}
inline unsigned long long __shfl_sync(unsigned mask, unsigned long long v, int src) {
  if (mask != 0xffffffffu) eb_emu_fatal("__shfl_sync with a partial mask");
  return eb_emu_collective(EB_EMU_SHFL, v, (uint32_t)src);
}
inline unsigned eb_emu_lane() { return ((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x) & 31u; }
inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int m) {
  return __shfl_sync(mask, v, (int)(eb_emu_lane() ^ (unsigned)m));
}
inline unsigned long long __shfl_xor_sync(unsigned mask, unsigned long long v, int m) {
  return __shfl_sync(mask, v, (int)(eb_emu_lane() ^ (unsigned)m));
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
