#include "emulated_codec.h"

namespace eb {
void register_emulated(Napi::Env, Napi::Object) {}
}  // namespace eb
