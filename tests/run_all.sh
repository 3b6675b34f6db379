#!/usr/bin/env bash
# The one command that runs every test: sets up a virtual environment (unless one is active),
# installs llmscratch with its test extras, builds and runs the googletest suite through ctest,
# then runs pytest. Works on a fresh machine with Python 3.11+, a C++17 compiler and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# torch is only the reference in tests. Pin the CPU build: an unpinned torch resolves to a CUDA
# build of several GB.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# triton: its kernels are tested in triton's CPU interpreter when there is no GPU.
python -m pip install -q ".[test,triton]"

# googletest for the C++ suite comes from the OS packages when missing.
if [ ! -e /usr/include/gtest/gtest.h ] && [ ! -e /usr/local/include/gtest/gtest.h ]; then
  if command -v apt-get >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "googletest is missing: install libgtest-dev (or googletest) and rerun" >&2
    exit 1
  fi
fi

cmake -S . -B build/ctest -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMSCRATCH_BUILD_TESTS=ON \
      -DLLMSCRATCH_BUILD_MODULE=OFF -DLLMSCRATCH_CUDA=OFF >/dev/null
cmake --build build/ctest -j "$JOBS"
# The summary line only (the list of CUDA cases skipped without a GPU would push it out of a tail).
ctest --test-dir build/ctest --output-on-failure -j "$JOBS" >build/ctest/ctest.log 2>&1 ||
  { cat build/ctest/ctest.log; exit 1; }
grep -E "tests passed|Total Test time" build/ctest/ctest.log

# Run from outside the source tree so `import llmscratch` finds the installed package.
cd tests/python
python -m pytest -q -p no:cacheprovider "$@"
