#!/usr/bin/env bash
# GPU check of fathom's torch executor, in one go, from a copy of the repository (no network needed).
#
#   profiles/gpu_check.sh            # random:fathom-r1-14b bf16 (+ fp8 on sm89+): a few minutes on an H100
#   profiles/gpu_check.sh --smoke    # random:tiny on the CPU: seconds, the code path only
#
# Writes profiles/results/gpu_check_<gpu-name>.json (copied under $OUT too when the device tool sets it).
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
python -m fathom.profiles.gpu_check "$@" 2>&1 | tee "$log"
if [ -n "${OUT:-}" ]; then
  result="$(sed -n 's/.*wrote \(.*\.json\)$/\1/p' "$log" | tail -1)"
  [ -n "$result" ] && cp "$result" "$OUT/"
  cp "$log" "$OUT/gpu_check.log"
fi
