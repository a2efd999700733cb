#!/usr/bin/env bash
# Accuracy of every quantization format on the embedded demo model (the README's table).
# Converts the demo model into an unquantized float32 checkpoint (the base) and one checkpoint per
# format, then appends one `fathom quality` record per format to profiles/results/.
set -euo pipefail
export FATHOM_RESULTS_DIR="${FATHOM_RESULTS_DIR:-$(cd "$(dirname "$0")" && pwd)/results}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--sequences "${SEQUENCES:-256}" --task-problems "${TASK_PROBLEMS:-256}")
fathom convert demo "$work/base" --dtype float32 >/dev/null
convert() { local name=$1; shift; fathom convert demo "$work/$name" --dtype float32 "$@" >/dev/null; }
convert fp8 --precision fp8 --kv-cache model
convert fp8-kvfp8 --precision fp8 --kv-cache fp8
convert kvfp8 --kv-cache fp8
convert kvint8 --kv-cache int8
# The demo model's MLP width (352) is not a multiple of 64 (W8A16) or 128 (AWQ, groups of 128):
# TensorRT-LLM would pad those linears, so the MLP stays unquantized in both.
convert w8a16 --precision w8a16 --exclude 'lm_head,*.mlp.*'
convert awq --precision w4a16_awq --exclude 'lm_head,*.mlp.*'
for name in fp8 fp8-kvfp8 kvfp8 kvint8 w8a16 awq; do
  fathom quality "$work/base" "$work/$name" "${args[@]}" --json |
    python -c "import json,sys; m=json.load(sys.stdin)['metrics']; print('$name', 'top1 %.4f' % m['top1_agreement'], 'kl_mean %.5f' % m['kl_mean'], 'task %s -> %s' % (m['task_accuracy_base'], m['task_accuracy_candidate']))"
done
