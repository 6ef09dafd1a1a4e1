#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-bench, llama-server, llama-cli) from the sources
# vendored in llama-cpp-python on the Python package index, for side-by-side benchmarks.
# Nothing of llama.cpp is committed to this repository. Output: $LLAMACPP_BIN (printed).
#   LLAMACPP_VERSION   llama-cpp-python version (default 0.3.36, llama.cpp commit 0c1e570)
#   SLUICE_BENCH_CACHE where to build (default ~/.cache/sluice/bench)
set -euo pipefail
VER=${LLAMACPP_VERSION:-0.3.36}
CACHE=${SLUICE_BENCH_CACHE:-$HOME/.cache/sluice/bench}
INDEX=${SLUICE_PYPI_INDEX:-https://pypi.org/simple}
SRC=$CACHE/llama_cpp_python-$VER
BUILD=$SRC/build-cpu
mkdir -p "$CACHE"
if [ -x "$BUILD/bin/llama-bench" ] && [ -x "$BUILD/bin/llama-server" ]; then
  echo "$BUILD/bin"; exit 0
fi
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  page=$(curl -fsSL "$INDEX/llama-cpp-python/")
  url=$(printf '%s' "$page" | grep -o "href=\"[^\"]*llama_cpp_python-$VER.tar.gz[^\"]*\"" | head -1 | sed 's/^href="//; s/"$//; s/&amp;/\&/g')
  [ -n "$url" ] || { echo "error: llama-cpp-python $VER sdist not found on $INDEX" >&2; exit 1; }
  sha=${url##*#sha256=}; url=${url%%#*}
  curl -fsSL -o "$CACHE/llama-cpp-python-$VER.tar.gz" "$url"
  echo "$sha  $CACHE/llama-cpp-python-$VER.tar.gz" | sha256sum -c - >&2
  tar -xzf "$CACHE/llama-cpp-python-$VER.tar.gz" -C "$CACHE"
fi
if [ ! -x "$CACHE/venv/bin/cmake" ]; then
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q cmake ninja >&2
fi
export PATH="$CACHE/venv/bin:$PATH"
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$BUILD" -j "$(nproc)" --target llama-bench llama-server llama-cli >&2
echo "$BUILD/bin"
