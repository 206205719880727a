# The native addon: the CPU codec, the CPU expert engine, the host emulation of the CUDA kernels, and (when the Makefile
# found nvcc and built build/cuda/libebcuda.a) the CUDA codec. EBSERVE_CUDA_LIB names that archive.
{
  "variables": {
    "ebserve_cuda_lib%": "<!(node -p \"process.env.EBSERVE_CUDA_LIB || ''\")",
    "ebserve_cuda_home%": "<!(node -p \"process.env.EBSERVE_CUDA_HOME || '/usr/local/cuda'\")"
  },
  "targets": [
    {
      "target_name": "ebserve_native",
      "sources": [
        "src/native/addon.cc",
        "src/native/codec_cpu.cc",
        "src/native/codec_entropy.cc",
        "src/native/crc32c.cc",
        "src/native/decode_stream.cc",
        "src/native/cuda_bridge.cc",
        "src/native/emulated_codec.cc",
        "src/native/decoder_addon.cc",
        "src/native/decoder_cpu.cc",
        "src/native/direct_file.cc",
        "src/native/emulated_expert.cc",
        "src/native/emulated_pipeline.cc",
        "src/native/expert_addon.cc",
        "src/native/expert_cpu.cc",
        "src/native/expert_cpu_gfni.cc",
        "src/native/expert_cpu_vnni.cc",
        "src/native/stream_format.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"],
      "conditions": [
        ["ebserve_cuda_lib!=''", {
          "defines": ["EBSERVE_WITH_CUDA"],
          "include_dirs": ["<(ebserve_cuda_home)/include"],
          "libraries": ["<(ebserve_cuda_lib)", "-L<(ebserve_cuda_home)/lib64", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
        }]
      ]
    }
  ]
}
