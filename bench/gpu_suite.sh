#!/usr/bin/env bash
# On a GPU machine: build llmscratch, run the whole pytest suite (the CUDA and Triton GPU tests
# included), compute-sanitizer memcheck over the CUDA tests and racecheck over
# bench/sanitize_kernels.py, then the benchmarks, and write summary.md with the date, GPU, commit,
# pass counts and figures into OUTDIR.
#   COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_suite.sh OUTDIR
# STEPS picks the parts (default: all of "test ctest memcheck racecheck bench train"; test-cuda,
# test-triton and test-rest split "test" for time-limited calls; memcheck-kernels is memcheck over
# the torch-free bench/sanitize_kernels.py, minutes instead of the tests' half hour); the sanitizer
# passes stop after SANITIZER_TIMEOUT seconds (exit 124 in the summary: a partial pass).
# PYTEST_JOBS=N runs the pytest steps in N processes sharing the GPU (needs pytest-xdist);
# SANITIZER_JOBS=N runs the memcheck step's per-file sanitizer processes N at a time.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUTDIR}
steps=${STEPS:-test ctest memcheck racecheck bench train}
mkdir -p "$out"
here=$(pwd)
has() { [[ " $steps " == *" $1 "* ]]; }

# SKIP_BUILD=1 reuses the package a previous call installed on the same machine.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  python3 -m pip install --no-build-isolation -q . >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
summary=("# GPU run" "" "- date: $(date -u +%Y-%m-%d)" "- GPU: $gpu" "- commit: ${COMMIT:-unknown}"
  "- torch: $(python3 -c 'import torch; print(torch.__version__)'), triton: $(python3 -c 'import triton; print(triton.__version__)' 2>/dev/null), nvcc: $(nvcc --version | tail -1)"
  "- command: \`STEPS=\"$steps\" bash bench/gpu_suite.sh OUTDIR\`" "")

cd "$here/tests/python"
cuda_tests="test_cuda.py test_cuda_ops.py test_cuda_streams_api.py cuda"
# The whole suite takes longer than one 10-minute call of a lent GPU machine: test-cuda,
# test-triton and test-rest are its three parts, to run in separate calls (SKIP_BUILD=1).
run_pytest() {  # log name, description, pytest arguments
  local name=$1 what=$2
  shift 2
  python3 -m pytest -q -p no:cacheprovider -rf ${PYTEST_JOBS:+-n "$PYTEST_JOBS"} "$@" >"$out/$name.log" 2>&1
  local rc=$?
  summary+=("pytest $what: \`$(tail -1 "$out/$name.log")\` (exit $rc)" "")
}
has test && run_pytest pytest "(whole suite, CUDA and Triton GPU tests included)"
has test-cuda && run_pytest pytest-cuda "(the CUDA tests: $cuda_tests)" $cuda_tests
has test-triton && run_pytest pytest-triton "(triton_backend)" triton_backend
has test-rest && run_pytest pytest-rest "(everything but the CUDA and Triton tests)" \
  --ignore=cuda --ignore=triton_backend $(printf -- '--ignore=%s ' $cuda_tests)
if has ctest; then
  # The googletest suite built with CUDA, so its CUDA cases (tests/cpp/test_cuda.cpp) run; it needs
  # googletest's headers and library on the machine.
  bdir="$here/build/ctest-cuda"
  if cmake -S "$here" -B "$bdir" -DCMAKE_BUILD_TYPE=Release -DLLMSCRATCH_BUILD_TESTS=ON \
       -DLLMSCRATCH_BUILD_MODULE=OFF >"$out/ctest.log" 2>&1 &&
     cmake --build "$bdir" -j "$(nproc)" >>"$out/ctest.log" 2>&1; then
    ctest --test-dir "$bdir" --output-on-failure >>"$out/ctest.log" 2>&1
    rc=$?
    summary+=("ctest with CUDA: \`$(grep -h 'tests passed' "$out/ctest.log" | tail -1)\` (exit $rc)" "")
  else
    summary+=("ctest with CUDA: not built (ctest.log says why; googletest missing?)" "")
  fi
fi
if has memcheck; then
  # One compute-sanitizer per CUDA test file, SANITIZER_JOBS of them at a time (default 1), each
  # stopped after SANITIZER_TIMEOUT seconds: in one process the whole set took longer than a
  # 10-minute call. Host backtraces are off (--show-backtrace device): with them on, Python frames
  # of the calls the sanitizer intercepted stayed referenced with their locals (a step's tensors),
  # so blocks were never freed, and the allocator's counters and the steady step's no-cudaMalloc
  # test failed under memcheck alone (bench/results/nvidia-h100-8edfc74). LLMSCRATCH_SANITIZER
  # lets a test that makes a CUDA call fail on purpose (an allocation too large) skip itself: the
  # sanitizer counts the failed call as an error.
  mkdir -p "$out/memcheck"
  : >"$out/memcheck/exit_codes"
  for f in $cuda_tests; do [ -d "$f" ] && ls "$f"/test_*.py || echo "$f"; done |
    xargs -P "${SANITIZER_JOBS:-1}" -I{} sh -c 'LLMSCRATCH_SANITIZER=memcheck timeout "$1" compute-sanitizer --tool memcheck \
      --show-backtrace device --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider -rf "$2" \
      >"$3/$(echo "$2" | tr / _).log" 2>&1; echo "$2 $?" >>"$3/exit_codes"' _ \
      "${SANITIZER_TIMEOUT:-420}" {} "$out/memcheck"
  clean=$(grep -l 'ERROR SUMMARY: 0 errors' "$out"/memcheck/*.log | wc -l)
  summary+=("compute-sanitizer memcheck, one process per CUDA test file ($(wc -l <"$out/memcheck/exit_codes") files): $clean with \`ERROR SUMMARY: 0 errors\`; the files that did not exit 0 (9: errors, 124: stopped by the time limit), with their last pytest line:" "")
  listed=${#summary[@]}
  while read -r f rc; do
    [ "$rc" = 0 ] || summary+=("- $f: exit $rc, \`$(grep -hE '[0-9]+ (passed|failed)' "$out/memcheck/$(echo "$f" | tr / _).log" | tail -1)\`")
  done <"$out/memcheck/exit_codes"
  [ ${#summary[@]} -eq "$listed" ] && summary+=("- none")
  summary+=("" "pytest lines summed over the files: $(cat "$out"/memcheck/*.log | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}') passed" "")
fi
# A compute-sanitizer tool over the torch-free bench/sanitize_kernels.py, which reaches every
# kernel family once: under pytest (which loads torch) a racecheck pass did not get past start-up
# within its time limit. Arguments: tool, log name, the log line that summarises it.
sanitize_kernels() {
  (cd "$here" && timeout "${SANITIZER_TIMEOUT:-420}" compute-sanitizer --tool "$1" --error-exitcode 9 \
    python3 bench/sanitize_kernels.py) >"$out/$2.log" 2>&1
  local rc=$?
  summary+=("compute-sanitizer $1 on bench/sanitize_kernels.py (every kernel family, bf16 and fp32): \`$(grep -h "$3" "$out/$2.log" | tail -1)\` (exit $rc)" "")
}
has memcheck-kernels && sanitize_kernels memcheck memcheck-kernels 'ERROR SUMMARY'
has racecheck && sanitize_kernels racecheck racecheck 'RACECHECK SUMMARY\|ERROR SUMMARY'
cd "$here"
if has bench; then
  python3 bench/compare_backends.py --device cuda --out-dir "$out/compare" >"$out/compare.log" 2>&1
  summary+=("compare_backends --device cuda: exit $?, report in compare/report.md" "")
fi
if has train; then
  # GPT-2 against torch eager and torch.compile; the LLaMA-style and MoE presets (no PyTorch twin)
  # per backend
  for preset in gpt2-124m llama-style-124m moe-124m-8e; do
    python3 bench/train_throughput.py --device cuda --preset $preset --seq-len 1024 --batch-size 16 \
      --dtype bfloat16 --steps 10 --warmup 3 --backends default,triton --out "$out/train-$preset.md" \
      >"$out/train-$preset.log" 2>&1
    summary+=("train_throughput $preset bf16: exit $?" "" "$(sed -n '/^|/p' "$out/train-$preset.md" 2>/dev/null)" "")
  done
fi
printf '%s\n' "${summary[@]}" >"$out/summary.md"
cat "$out/summary.md"
# the failures, if any (a run without any exits 0 all the same)
grep -hE "^(FAILED|ERROR)" "$out"/pytest*.log 2>/dev/null | head -40 || true
