// decode_stream: the decode stream of the CPU "device". Without a GPU the expert cache is host
// memory and the offload fetcher decodes experts there. On libuv's pool a decode can only be
// queued by the event loop once its (emulated) copy has landed, and a loop busy with a layer's
// compute notices that late: measured on the embedded model, prefetched moves were picked up
// 2.3 ms after they landed, so their decodes ran when the next layer already waited for them.
// This stream is one thread that takes jobs in the order their copies land, waits for that moment
// itself (as a CUDA decode stream waits on the copy's event), decodes, and hands the values back
// through a thread-safe function. Its own thread also keeps the pool free for compute calls.
//
//   decodeStreamRun(parts: [{head, rungs}], delayMs, threads, outs?) → Promise<{values: Float32Array[],
//       seconds, waitedSeconds}>
//
// outs, when given, holds a Float32Array of each part's values to decode into (a recycled buffer:
// a miss then allocates nothing); values are those arrays.
//
// Each part decodes every rung it is given (rungs 0..rungs.length − 1) into f32; the job starts
// no earlier than delayMs after the call. `seconds` is the decode's own time on the stream
// thread, `waitedSeconds` how long the job sat in the stream past its start time (the stream
// was busy with earlier jobs). Streams are validated when the job is queued (without checksums:
// the store verified them when it built or loaded them), so a bad one is a synchronous error.
#pragma once
#include <napi.h>

namespace eb {
void register_decode_stream(Napi::Env env, Napi::Object exports);
}  // namespace eb
