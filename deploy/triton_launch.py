"""launch.sh of an exported Triton model repository: the server command and the curl checks.

The command is the one the backend's triton_backend/scripts/launch_triton_server.py
(NVIDIA/TensorRT-LLM, 1.2 line) builds: one `tritonserver` per rank, each with its own python-backend
shared-memory prefix; ranks other than 0 load only the tensorrt_llm model
(`--model-control-mode=explicit --load-model=tensorrt_llm`), since only rank 0 takes requests and the
engine's other ranks follow it (leader mode). For one rank the script runs tritonserver without mpirun,
as its `--no-mpi` does. The server flags are written once each (that script appends the port flags
twice).
"""

from __future__ import annotations

import shlex


def _rank_args(rank: int, engine_model: str) -> list[str]:
    args = ['"$TRITONSERVER"', '--model-repository="$REPO"', '--grpc-port="$GRPC_PORT"', '--http-port="$HTTP_PORT"',
            '--metrics-port="$METRICS_PORT"', "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
    if rank:
        args += ["--model-control-mode=explicit", f"--load-model={engine_model}"]
    return args


def server_command(ranks: int, engine_model: str) -> str:
    """The shell command starting tritonserver for an engine of `ranks` MPI ranks."""
    if ranks == 1:
        return "exec " + " ".join(_rank_args(0, engine_model))
    contexts = [" ".join(["-n 1", *_rank_args(rank, engine_model)]) for rank in range(ranks)]
    return "exec mpirun --allow-run-as-root \\\n    " + " \\\n    : ".join(contexts)


def launch_script(model_name: str, ranks: int, engine_model: str, python_models: tuple[str, ...],
                  container_models_dir: str, trtllm_version: str) -> str:
    links = " ".join(f"{name}/1/model.py" for name in python_models)
    gpus = "1 GPU" if ranks == 1 else f"{ranks} GPUs (one MPI rank each)"
    request = shlex.quote('{"text_input": "What is 12+34?", "max_tokens": 64}')
    return f"""#!/usr/bin/env bash
# Triton Inference Server for this model repository (written by fathom export triton).
# The engine runs on {gpus}. Run this inside the Triton TensorRT-LLM container that
# pairs with tensorrt-llm {trtllm_version}, with the engine and tokenizer directories mounted at the paths
# in */config.pbtxt.
#   ./launch.sh           start the server
#   ./launch.sh check     ask a running server: /v2/health/ready, then one generate request
# Environment: TRITONSERVER (binary), HTTP_PORT (8000), GRPC_PORT (8001), METRICS_PORT (8002).
set -euo pipefail

REPO="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
MODEL={shlex.quote(model_name)}
TRITONSERVER="${{TRITONSERVER:-/opt/tritonserver/bin/tritonserver}}"
HTTP_PORT="${{HTTP_PORT:-8000}}"
GRPC_PORT="${{GRPC_PORT:-8001}}"
METRICS_PORT="${{METRICS_PORT:-8002}}"

serve() {{
    for file in {links}; do
        if [ ! -e "$REPO/$file" ]; then
            echo "launch.sh: $REPO/$file: $(readlink "$REPO/$file" || true) not found; run in the Triton" \\
                "TensorRT-LLM container, or put triton_backend/all_models/inflight_batcher_llm/$file of" \\
                "TensorRT-LLM v{trtllm_version} there (the container has it under {container_models_dir})" >&2
            exit 1
        fi
    done
    {server_command(ranks, engine_model)}
}}

check() {{
    curl -sSf "http://localhost:$HTTP_PORT/v2/health/ready"
    echo "ready"
    curl -sSf -X POST "http://localhost:$HTTP_PORT/v2/models/$MODEL/generate" \\
        -d {request}
    echo
}}

case "${{1:-serve}}" in
    serve) serve ;;
    check) check ;;
    *) echo "usage: $0 [serve|check]" >&2; exit 2 ;;
esac
"""
