// direct_file.h — the disk tier's reads: positioned, around the page cache, timed (direct_file.cc).
#pragma once
#include <napi.h>

namespace eb {

// directOpen, directRead, directClose on the addon's exports.
void register_direct_file(Napi::Env env, Napi::Object exports);

}  // namespace eb
