#!/usr/bin/env bash
# GPU check of fathom's torch executor, in one go, from a copy of the repository (no network needed).
#
#   profiles/gpu_check.sh            # CUDA tests, then random:fathom-r1-14b bf16 (+ fp8 on sm89+): minutes on an H100
#   profiles/gpu_check.sh --smoke    # on the CPU, random:tiny (the CUDA tests skip): seconds, the code path only
#
# First the CUDA test suite (tests/gpu, `pytest -m gpu`, well under a minute on a GPU): its output
# goes to gpu_tests.log and its pass/fail count into gpu_check.log; a failing test is recorded and
# the measurement still runs. Then the measurement writes profiles/results/gpu_check_<gpu-name>.json.
# Under $OUT (set by the device tool) the JSON and both logs are copied. Exit status: the
# measurement's when it failed, else the test suite's.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import fathom.runtime" 2>/dev/null; then
  # Not installed here: lay out the fathom namespace package from this tree (pyproject's package-dir).
  pkg="$(mktemp -d)"
  mkdir -p "$pkg/fathom"
  for part in build engine runtime profiles; do ln -s "$PWD/$part" "$pkg/fathom/$part"; done
  export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi: not available"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

log="$(mktemp)"
tests_log="$(mktemp)"
tests_timeout_s=150  # with --budget-s 300 below: under 8 minutes in all
if python -c "import pytest" 2>/dev/null; then
  set +e
  timeout "$tests_timeout_s" python -m pytest -q -rfEs -p no:cacheprovider -m gpu tests/gpu 2>&1 \
    | tee "$tests_log"
  tests_rc=${PIPESTATUS[0]}
  set -e
  # pytest's last line, e.g. "2 failed, 12 passed in 31.20s" (between "=" rules in some versions)
  counts="$(grep -E '^[= ]*[0-9]+ (passed|failed|skipped|errors?|deselected)' "$tests_log" | tail -1 \
    | sed -E 's/^[= ]+//; s/[= ]+$//' || true)"
  if [ "$tests_rc" -eq 124 ]; then
    counts="timed out after ${tests_timeout_s} s${counts:+ ($counts)}"
  fi
  summary="gpu tests: ${counts:-no summary line} (pytest exit $tests_rc)"
else
  tests_rc=1
  summary="gpu tests: not run (pytest is not installed)"
  echo "$summary" > "$tests_log"
fi
echo; echo "$summary" | tee "$log"

set +e
python -m fathom.profiles.gpu_check "$@" 2>&1 | tee -a "$log"
check_rc=${PIPESTATUS[0]}
set -e
echo "$summary" | tee -a "$log"

if [ -n "${OUT:-}" ]; then
  result="$(sed -n 's/.*wrote \(.*\.json\)$/\1/p' "$log" | tail -1)"
  [ -n "$result" ] && cp "$result" "$OUT/"
  cp "$log" "$OUT/gpu_check.log"
  cp "$tests_log" "$OUT/gpu_tests.log"
fi
if [ "$check_rc" -ne 0 ]; then exit "$check_rc"; fi
exit "$tests_rc"
