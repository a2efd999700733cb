"""`fathom serve`: an OpenAI-compatible server (chat and completions, streaming, metrics)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import open_runtime, runtime_options


def served_name(model: str) -> str:
    """The model's directory name, `demo` for the demo, the preset for random:<preset>[@seed]."""
    if model.startswith("random:"):
        return model.partition(":")[2].partition("@")[0]
    return Path(model).name or model


@click.command("serve")
@click.argument("model")
@runtime_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Serving beyond this machine (e.g. 0.0.0.0) is your explicit choice.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="FATHOM_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1/* (env FATHOM_API_KEY). /health and /metrics stay open.")
@click.option("--served-model-name", default=None, help="Model id clients send [default: MODEL's directory name].")
@click.option("--max-num-seqs", type=click.IntRange(1), default=64, show_default=True,
              help="Sequences decoded together (torch executor).")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Choices waiting for a first token before new requests get 429.")
@click.option("--max-tokens-cap", type=click.IntRange(1), default=None,
              help="Largest max_tokens a request may ask for [default: the context length].")
@click.option("--max-body-bytes", type=click.IntRange(1024), default=8 << 20, show_default=True)
@click.option("--grace-period", "grace_s", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds running requests get to finish after SIGTERM before they end with finish_reason 'abort'.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def serve_cmd(model, executor, dtype, device, tokenizer, threads, max_seq_len, hostfile, tp, torch_compile, host, port,
              api_key, served_model_name, max_num_seqs, max_queue, max_tokens_cap, max_body_bytes, grace_s, log_level):
    """Serve MODEL over an OpenAI-compatible HTTP API (vLLM / trtllm-serve style).

    Endpoints: /v1/models, /v1/chat/completions, /v1/completions (streaming or not), /health, /metrics.

    \b
        fathom serve demo
        curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"model": "demo", "messages": [{"role": "user", "content": "What is 2 + 3? Please reason step by step, and put your final answer within \\\\boxed{}."}]}'
    """
    from fathom.runtime.serve.app import ServerConfig, ServerState
    from fathom.runtime.serve.engine import EngineLoop
    from fathom.runtime.serve.metrics import ServerMetrics
    from fathom.runtime.serve.runner import serve
    from fathom.runtime.nvml_devices import open_visible_gpus

    source, ex, tok = open_runtime(model, executor, dtype, device, tokenizer, max_seq_len, threads, hostfile=hostfile,
                                   tp=tp, torch_compile=torch_compile, max_num_seqs=max_num_seqs, prefix_reuse=True)
    engine = EngineLoop(ex)
    config = ServerConfig(served_model_name or served_name(model), max_seq_len, api_key, max_queue,
                          max_tokens_cap, max_body_bytes)
    state = ServerState(config, engine, tok, ServerMetrics(engine, open_visible_gpus()), ex.name)
    click.echo(f"fathom serve: {config.served_model_name} on http://{host}:{port} ({ex.name} executor"
               f"{', API key required' if api_key else ''})", err=True)
    serve(state, host, port, log_level, grace_s)


COMMANDS = [serve_cmd]
