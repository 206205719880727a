// expert_addon.h — the JS functions of the CPU engine (expert_addon.cc) and the native decoder
// (decoder_addon.cc), and the argument reader they share.
#pragma once
#include <napi.h>

#include <string>

#include "expert_cpu.h"

namespace eb {

// fusedMatrix, fusedMatrixDecode, expertLayerSync, expertLayerAsync, setFusedDecoder.
void register_expert_engine(Napi::Env env, Napi::Object exports);
// decoderNew, decoderForwardAsync.
void register_decoder(Napi::Env env, Napi::Object exports);

// A [rows, cols] matrix argument: a Float32Array (f32), a Uint16Array (bf16 bits, rows of whole
// 32-value blocks), a fusedMatrix or a symbolMatrix of that shape; errors name `what`.
MatrixRef matrix_of(Napi::Env env, const Napi::Value& v, int rows, int cols, const std::string& what);

// An expert given as [gate, up, down], each a Float32Array or a fusedMatrix of the expert's
// shape; errors name `what` and the matrix.
ExpertWeights expert_weights_of(Napi::Env env, const Napi::Value& v, int d, int ff, const std::string& what);

}  // namespace eb
