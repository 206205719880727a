// EB_CLONES: a hot loop compiled three times (AVX-512, AVX2, the x86-64 baseline), the best the
// CPU runs picked at load time, so the addon stays portable and still uses the wide units where
// they exist. EB_NO_CLONES (the sanitizer builds) compiles it once.
#pragma once

#if defined(__x86_64__) && !defined(EB_NO_CLONES)
#define EB_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EB_CLONES
#endif
