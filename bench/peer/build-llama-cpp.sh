#!/usr/bin/env bash
# A native llama.cpp build for `make bench-peer`: the source node-llama-cpp ships as a git bundle
# (node_modules/node-llama-cpp/llama/gitRelease.bundle, the llama.cpp its prebuilt binaries come
# from) cloned into build/llama.cpp/src, built in Release the way llama.cpp's docs/build.md
# recommends for a CPU build on the machine that runs it: GGML_NATIVE=ON (-march=native), OpenMP,
# no CUDA, no curl. Only llama-bench (decode and prompt tokens/s, one sequence),
# llama-batched-bench (decode tokens/s of 8 sequences together) and llama-quantize (the OLMoE
# shape's Q4_0, Q4_K_M and Q8_0 files made from its f16 export, as a user would) are built.
#
# Cached: skipped when build/llama.cpp/bin/llama-bench exists and build/llama.cpp/build.json
# records the bundle's commit, these flags and these targets. The build time (and the first full
# build's, when this one was incremental), the commit and the flags go into build/llama.cpp/build.json
# (bench/peer/run.ts copies them into bench/results/peer.json).
#
# Env: LLAMA_CPP_JOBS (default 2: the machine is shared), LLAMA_CPP_REBUILD=1 builds again.
# About 10-15 minutes on 2 cores (261 compile steps; 901 s here while other work ran).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUNDLE="$ROOT/node_modules/node-llama-cpp/llama/gitRelease.bundle"
OUT="$ROOT/build/llama.cpp"
SRC="$OUT/src"
CMAKE_BUILD="$OUT/cmake"
BIN="$OUT/bin"
STAMP="$OUT/build.json"
JOBS="${LLAMA_CPP_JOBS:-2}"
TARGETS=(llama-bench llama-batched-bench llama-quantize)
FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=ON
  -DGGML_OPENMP=ON
  -DGGML_CUDA=OFF
  -DLLAMA_CURL=OFF
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_SERVER=OFF
)

say() { echo "build-llama-cpp: $*" >&2; }

[ -f "$BUNDLE" ] || { say "no $BUNDLE (node-llama-cpp not installed: run make deps)"; exit 1; }
command -v cmake >/dev/null || { say "cmake is missing (apt-get install cmake)"; exit 1; }
COMMIT="$(git bundle list-heads "$BUNDLE" | awk '$2 == "HEAD" { print $1; exit }')"
[ -n "$COMMIT" ] || COMMIT="$(git bundle list-heads "$BUNDLE" | awk 'NR == 1 { print $1 }')"
[ -n "$COMMIT" ] || { say "cannot read a commit from $BUNDLE"; exit 1; }
FLAGS_TEXT="${FLAGS[*]}"
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)

cached() {
  [ -f "$STAMP" ] || return 1
  for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
  node -e '
    const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const [commit, flags, ...targets] = process.argv.slice(2);
    process.exit(s.commit === commit && s.cmake_flags === flags && targets.every((t) => s.targets.includes(t)) ? 0 : 1);
  ' "$STAMP" "$COMMIT" "$FLAGS_TEXT" "${TARGETS[@]}"
}
if [ "${LLAMA_CPP_REBUILD:-0}" != 1 ] && cached; then
  say "cached: $BIN (llama.cpp $COMMIT)"
  exit 0
fi

START=$(date +%s)
if [ -d "$SRC/.git" ] && [ "$(git -C "$SRC" rev-parse HEAD 2>/dev/null)" = "$COMMIT" ]; then
  say "source at $COMMIT already in $SRC"
else
  say "cloning $BUNDLE ($COMMIT) into $SRC"
  rm -rf "$SRC"
  mkdir -p "$OUT"
  git -c advice.detachedHead=false clone -q --no-checkout "$BUNDLE" "$SRC"
  git -C "$SRC" -c advice.detachedHead=false checkout -q "$COMMIT"
fi

# A flag change reconfigures from scratch (a stale CMakeCache keeps old options).
if [ -f "$CMAKE_BUILD/flags.txt" ] && [ "$(cat "$CMAKE_BUILD/flags.txt")" != "$FLAGS_TEXT ${GENERATOR[*]}" ]; then
  rm -rf "$CMAKE_BUILD"
fi
# Incremental when objects of this commit are already there (e.g. a target was added): its time is
# then not a build's, so the first full build's time is carried over from the old record.
INCREMENTAL=false
[ -f "$CMAKE_BUILD/CMakeCache.txt" ] && [ "$(git -C "$SRC" rev-parse HEAD)" = "$COMMIT" ] && INCREMENTAL=true
say "configuring: cmake ${GENERATOR[*]} $FLAGS_TEXT"
cmake -S "$SRC" -B "$CMAKE_BUILD" "${GENERATOR[@]}" "${FLAGS[@]}" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log" >&2; exit 1; }
echo "$FLAGS_TEXT ${GENERATOR[*]}" >"$CMAKE_BUILD/flags.txt"
say "building ${TARGETS[*]} with -j$JOBS (log: build/llama.cpp/build.log)"
cmake --build "$CMAKE_BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" >&2; exit 1; }

mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
  f="$(find "$CMAKE_BUILD/bin" "$CMAKE_BUILD" -maxdepth 2 -type f -name "$t" -perm -u+x 2>/dev/null | head -1)"
  [ -n "$f" ] || { say "built, but no $t binary under $CMAKE_BUILD"; exit 1; }
  cp "$f" "$BIN/$t"
done
SECONDS_TAKEN=$(( $(date +%s) - START ))
node -e '
  const fs = require("fs");
  const [file, commit, flags, jobs, secs, incremental, cxx, ...targets] = process.argv.slice(1);
  let first = Number(secs);
  if (incremental === "true") {
    try {
      const old = JSON.parse(fs.readFileSync(file, "utf8"));
      first = old.commit === commit && typeof old.first_build_seconds === "number" ? old.first_build_seconds : null;
    } catch { first = null; }
  }
  fs.writeFileSync(file, JSON.stringify({
    source: "node_modules/node-llama-cpp/llama/gitRelease.bundle",
    commit, cmake_flags: flags, targets, jobs: Number(jobs),
    build_seconds: Number(secs), incremental: incremental === "true", first_build_seconds: first,
    compiler: cxx, built_at: new Date().toISOString(),
  }, null, 2) + "\n");' "$STAMP" "$COMMIT" "$FLAGS_TEXT" "$JOBS" "$SECONDS_TAKEN" "$INCREMENTAL" "$(c++ --version | head -1)" "${TARGETS[@]}"
say "built ${TARGETS[*]} in ${SECONDS_TAKEN} s$([ "$INCREMENTAL" = true ] && echo ' (incremental)') into $BIN (llama.cpp $COMMIT)"
