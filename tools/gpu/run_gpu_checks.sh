#!/usr/bin/env bash
# GPU checks: builds the engine (no gRPC) against the machine's CUDA PyTorch, runs the
# parity and GPU tests, and runs the model benchmark on cuda:0.
#
# For a GPU machine that has python3 with a CUDA torch 2.11 (LibTorch inside the wheel),
# nvcc matching torch's CUDA, CMake and ninja, but no Abseil / GoogleTest / Google
# Benchmark / nlohmann-json. Those come from a carry folder made on a Debian 12 machine by
# tools/gpu/prepare_carry.sh (`dpkg -x` of Debian's packages):
#   CARRY/usr/include/{absl,gtest,gmock,benchmark,nlohmann}/
#   CARRY/usr/lib/x86_64-linux-gnu/{libabsl_*.so*,libgtest*.a,libgmock*.a,libbenchmark*}
#   CARRY/usr/lib/x86_64-linux-gnu/cmake/{absl,GTest,benchmark}/
#   CARRY/usr/share/cmake/nlohmann_json/
# With the device tool, from the repo root here:
#   tools/gpu/prepare_carry.sh          # once, makes third_party_carry/ (git-ignored, ~13 MB)
#   run(command="tools/gpu/run_gpu_checks.sh", carry=["third_party_carry"], timeout_s=...)
#
# Environment (all optional):
#   CARRY_DIR (alias ABSL_PREFIX)  carry folder; default <repo>/third_party_carry. If it does
#                                  not exist, the packages must be installed system-wide.
#   PYTHON            interpreter with the CUDA torch (and safetensors, transformers);
#                     default python3. Passed as -DMOR_PYTHON=<abs path> (the interpreter
#                     the parity fixtures run the Python reference with; default .venv's).
#   BUILD_DIR         default <repo>/build/gpu
#   JOBS              ninja -j; default nproc
#   CTEST_LABELS      ctest -L regex; default 'parity|gpu'
#   BENCH_MODEL_ARGS  extra flags for bench/mor_bench_model (see below)
#   OUT               results folder (the device tool sets it); else <BUILD_DIR>/gpu-results
# Exit status: non-zero if configure, build or ctest fails; the benchmark's failure is
# reported but does not change it.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)"
cd "$ROOT"

# >>> TBD: mor_bench_model's flags are not settled yet. Without --model_dir it hands over
# to tools/bench/bench_model.py (C++ vs eager PyTorch; e.g. --quick, --batch-sizes 1,8,32,64,
# --json-out "$RESULTS/bench_model.json"). --device cuda:0 is always passed.
BENCH_MODEL_ARGS="${BENCH_MODEL_ARGS:-}"
# <<< TBD

CARRY="${CARRY_DIR:-${ABSL_PREFIX:-$ROOT/third_party_carry}}"
PYTHON="${PYTHON:-python3}"
BUILD="${BUILD_DIR:-$ROOT/build/gpu}"
JOBS="${JOBS:-$(nproc)}"
LABELS="${CTEST_LABELS:-parity|gpu}"
RESULTS="${OUT:-$BUILD/gpu-results}"
mkdir -p "$RESULTS"

step() { echo "=== run_gpu_checks: $* ($(date +%H:%M:%S))"; }

step "environment"
"$PYTHON" - <<'PY' | tee "$RESULTS/env.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
{ command -v nvcc >/dev/null && nvcc --version | tail -n1; cmake --version | head -n1;
  echo "ninja $(ninja --version)"; } | tee -a "$RESULTS/env.txt"
TORCH_PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
PYTHON_ABS="$(command -v "$PYTHON")"

PREFIX_PATH="$TORCH_PREFIX"
if [[ -d $CARRY/usr ]]; then
  PREFIX_PATH+=";$CARRY/usr;$CARRY/usr/lib/x86_64-linux-gnu/cmake;$CARRY/usr/share/cmake"
else
  echo "run_gpu_checks: no carry folder at $CARRY: expecting Abseil, GTest, nlohmann_json system-wide"
fi

step "configure $BUILD"
# MOR_ENGINE_ONLY: model + scheduler + benchmarks, no gRPC / civetweb.
cmake -S "$ROOT" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DMOR_ENGINE_ONLY=ON \
  -DMOR_PYTHON="$PYTHON_ABS" \
  -DCMAKE_PREFIX_PATH="$PREFIX_PATH" 2>&1 | tee "$RESULTS/configure.log"
grep -E '^(absl|GTest|nlohmann_json|Torch|benchmark)_DIR:' "$BUILD/CMakeCache.txt" || true

step "build (-j$JOBS)"
set +e
ninja -C "$BUILD" -j"$JOBS" >"$RESULTS/build.log" 2>&1
build_rc=$?
set -e
tail -n 30 "$RESULTS/build.log"
if ((build_rc != 0)); then
  echo "run_gpu_checks: build failed (exit $build_rc); full log in $RESULTS/build.log"
  exit "$build_rc"
fi

step "ctest -L '$LABELS'"
set +e
ctest --test-dir "$BUILD" -L "$LABELS" --output-on-failure -j1 \
  --output-junit "$RESULTS/ctest-junit.xml" 2>&1 | tee "$RESULTS/ctest.log"
ctest_rc=${PIPESTATUS[0]}
set -e

bench="$BUILD/bench/mor_bench_model"
if [[ -x $bench ]]; then
  step "mor_bench_model --device cuda:0 $BENCH_MODEL_ARGS"
  # shellcheck disable=SC2086  # BENCH_MODEL_ARGS is a word list on purpose
  if ! "$bench" --device cuda:0 $BENCH_MODEL_ARGS 2>&1 | tee "$RESULTS/bench_model.txt"; then
    echo "run_gpu_checks: mor_bench_model failed (see $RESULTS/bench_model.txt)"
  fi
else
  echo "run_gpu_checks: $bench not built (the model benchmark lands later): skipped"
fi

step "done: ctest exit $ctest_rc; results in $RESULTS"
exit "$ctest_rc"
