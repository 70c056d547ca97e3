#!/usr/bin/env bash
# Builds third_party_carry/: the C++ dependencies that the engine-only build needs besides
# LibTorch, taken from Debian 12's packages, for a GPU machine that has PyTorch, nvcc,
# CMake and ninja but no Abseil, GoogleTest, Google Benchmark or nlohmann-json.
# Run it HERE (a Debian 12 machine with apt), then carry the folder to the GPU machine
# (device `run` with carry: ["third_party_carry"]) and run tools/gpu/run_gpu_checks.sh.
#
# Usage: tools/gpu/prepare_carry.sh [OUT_DIR]      (default: <repo>/third_party_carry)
#
# Layout produced (each package extracted with `dpkg -x`, i.e. its files under usr/):
#   OUT_DIR/usr/include/{absl,gtest,gmock,benchmark,nlohmann}/...
#   OUT_DIR/usr/lib/x86_64-linux-gnu/libabsl_*.so*, libgtest*.a, libgmock*.a, libbenchmark*
#   OUT_DIR/usr/lib/x86_64-linux-gnu/cmake/{absl,GTest,benchmark}/*Config.cmake
#   OUT_DIR/usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake
#   OUT_DIR/CARRY_MANIFEST.txt     (package versions)
# CMake finds them with
#   -DCMAKE_PREFIX_PATH="<torch>;OUT_DIR/usr;OUT_DIR/usr/lib/x86_64-linux-gnu/cmake;OUT_DIR/usr/share/cmake"
#
# Debian's CMake package files are relocatable: they compute their prefix from their own
# location and fall back to /usr only when their real path IS the /usr one. The pkg-config
# files hardcode prefix=/usr; they are rewritten to the carry folder's path (pkg-config is
# not used by our build, this is for completeness). The script then checks that no
# CMake file still names an absolute /usr path other than that fallback.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)"
OUT="$(readlink -m "${1:-$ROOT/third_party_carry}")"
PACKAGES=(
  libabsl-dev libabsl20220623
  libre2-dev libre2-9
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev libbenchmark1debian
  nlohmann-json3-dev
)

if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "prepare_carry: needs a Debian machine (apt-get, dpkg)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "prepare_carry: downloading ${PACKAGES[*]}"
if ! (cd "$work" && apt-get download -q "${PACKAGES[@]}" >/dev/null 2>"$work/apt.err"); then
  cat "$work/apt.err" >&2
  echo "prepare_carry: apt-get download failed (run 'apt-get update' first?)" >&2
  exit 1
fi

stage="$work/carry"
mkdir -p "$stage"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$stage"
  dpkg-deb -f "$deb" Package Version | sed 's/^[^:]*: //' | paste -sd' ' >>"$stage/CARRY_MANIFEST.txt"
done
# Drop what the build never reads (docs, GoogleTest's sources).
rm -rf "$stage/usr/share/doc" "$stage/usr/share/lintian" "$stage/usr/src"

# pkg-config files: point prefix at the carry folder.
find "$stage" -name '*.pc' -exec sed -i "s#^prefix=/usr\$#prefix=$OUT/usr#" {} +

# CMake files must not name /usr except in the "/usr move" fallback lines.
if grep -rn '"/usr' "$stage/usr/lib/x86_64-linux-gnu/cmake" "$stage/usr/share/cmake" |
  grep -v ':[0-9]*: *#' |
  grep -v '_realOrig\|set(_IMPORT_PREFIX "/usr/lib/x86_64-linux-gnu/cmake/\|set(PACKAGE_PREFIX_DIR "/usr")'; then
  echo "prepare_carry: the CMake files above hardcode /usr paths; fix this script" >&2
  exit 1
fi

rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
cp -a "$stage" "$OUT"
echo "prepare_carry: $OUT ($(du -sh "$OUT" | cut -f1)):"
sed 's/^/  /' "$OUT/CARRY_MANIFEST.txt"
