# ebserve — every build step, from a fresh clone. `make test` and `make serve` are all a user needs;
# they install what is missing first (npm packages; Debian packages where a step needs one).
SHELL := /bin/bash
.DEFAULT_GOAL := build

# nvcc: on the PATH, or in CUDA's usual prefix. Without it the addon builds CPU-only.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(if $(NVCC),$(firstword $(wildcard /usr/local/cuda) $(abspath $(dir $(realpath $(NVCC)))/..)),)
NVCC_FLAGS := -O3 -std=c++17 -fmad=false -Xcompiler -fPIC \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90
# npm's bundled node-gyp (node-gyp 13 from the registry needs Node >= 22).
NODE_GYP := node $(dir $(realpath $(shell command -v npm)))../node_modules/node-gyp/bin/node-gyp.js $(if $(wildcard /usr/include/node/node.h),--nodedir=/usr,)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_UPDATED := build/.apt-updated

CUDA_SOURCES := $(wildcard cuda/*.cu)
CUDA_HEADERS := $(wildcard cuda/*.cuh cuda/*.h)
NATIVE_SOURCES := $(wildcard src/native/*.cc src/native/*.h) $(CUDA_HEADERS) binding.gyp
TS_SOURCES := $(shell find src bin -name '*.ts' 2>/dev/null) tsconfig.json
CUDA_LIB := $(if $(NVCC),build/cuda/libebcuda.a,)
ADDON := build/Release/ebserve_native.node

.PHONY: build deps test serve bench-codec fuzz cuda clean check-cuda

deps: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# apt-get install NAME, once, only when the Debian package is missing.
define apt_need
	@dpkg -s $(1) >/dev/null 2>&1 || { \
	  [ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && mkdir -p build && touch $(APT_UPDATED); }; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); }
endef

cuda: $(CUDA_LIB)
build/cuda/libebcuda.a: $(CUDA_SOURCES) $(CUDA_HEADERS) src/native/stream_format.h src/native/codec_cpu.h src/native/crc32c.h
	@mkdir -p build/cuda
	@echo "nvcc: $(NVCC) (CUDA at $(CUDA_HOME)); objects for sm_80, sm_90 + compute_90 PTX"
	for f in $(CUDA_SOURCES); do $(NVCC) $(NVCC_FLAGS) -c $$f -o build/cuda/$$(basename $$f .cu).o || exit 1; done
	ar rcs $@ $(patsubst cuda/%.cu,build/cuda/%.o,$(CUDA_SOURCES))

$(ADDON): node_modules/.installed $(NATIVE_SOURCES) $(CUDA_LIB)
	EBSERVE_CUDA_LIB="$(if $(CUDA_LIB),$(abspath $(CUDA_LIB)),)" EBSERVE_CUDA_HOME="$(CUDA_HOME)" \
	  sh -c '$(NODE_GYP) configure --loglevel=warn && $(NODE_GYP) build --jobs=2 --loglevel=warn'
	@touch $@

dist/.built: node_modules/.installed $(TS_SOURCES)
	npx tsc -p tsconfig.json
	@touch $@

build: $(ADDON) dist/.built

test: build
	npx mocha

bench-codec: build
	$(call apt_need,libzfp-dev)
	@mkdir -p build/bench bench/results
	gcc -O3 -march=x86-64-v2 -fopenmp -o build/bench/zfp_peer bench/codec/zfp_peer.c -lzfp -lm
	npx tsx bench/codec/run.ts

# A long fuzz run of the stream decoder, outside mocha: the C++ validator and decoder built with
# AddressSanitizer and UBSan, fed >= 100,000 damaged and forged streams (test/fuzz/fuzz_decode.cc).
# FUZZ_CASES (default 200000) and FUZZ_SEED (default fixed) choose the run; a failure prints the case
# number, which `build/fuzz/fuzz_decode N SEED --case I [--dump DIR]` replays alone.
FUZZ_BIN := build/fuzz/fuzz_decode
FUZZ_SOURCES := test/fuzz/fuzz_decode.cc src/native/codec_cpu.cc src/native/stream_format.cc src/native/crc32c.cc
$(FUZZ_BIN): $(FUZZ_SOURCES) $(wildcard src/native/*.h) $(CUDA_HEADERS)
	@mkdir -p build/fuzz
	g++ -std=c++17 -O1 -g -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
	  -fno-omit-frame-pointer -DEB_NO_CLONES -o $@ $(FUZZ_SOURCES) -lpthread

fuzz: $(FUZZ_BIN)
	time ./$(FUZZ_BIN) $${FUZZ_CASES:-200000} $${FUZZ_SEED:-}

serve:
	@echo "ebserve serve lands with the model and serving work (issues 3 and 6); this build has the codec and its CLI." >&2
	@exit 2

clean:
	rm -rf build dist
