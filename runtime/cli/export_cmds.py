"""`fathom export ...`: deployment artifacts for other serving stacks, made from an engine's manifest,
and the model itself as an ONNX graph."""

from __future__ import annotations

import click

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.precision import DTYPES
from fathom.runtime.onnx_opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

from .common import emit_json, json_option


@click.group("export")
def export_group():
    """Deployment files for other serving stacks (Triton, trtllm-serve, ONNX for TensorRT and onnxruntime)."""


@export_group.command("triton")
@click.argument("engine", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="Tokenizer directory when ENGINE has none (the model's Hugging Face directory).")
@click.option("--model-name", default="fathom", show_default=True,
              help="Name of the ensemble model clients call: /v2/models/NAME/generate.")
@click.option("--max-queue-delay-us", type=click.IntRange(0), default=0, show_default=True,
              help="Dynamic batching: how long a request may wait for others, in microseconds.")
@click.option("--kv-cache-free-gpu-mem-fraction", type=float, default=None,
              help="Share of free GPU memory for the KV cache, in (0, 1] (default: the engine manifest's).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export_triton_cmd(engine, out, tokenizer, model_name, max_queue_delay_us, kv_cache_free_gpu_mem_fraction, force):
    """Write a Triton Inference Server model repository OUT for ENGINE (tensorrtllm_backend layout).

    preprocessing, tensorrt_llm, postprocessing and an ensemble named --model-name, each with its
    config.pbtxt filled from the engine manifest, and OUT/launch.sh (tritonserver, or mpirun for a
    multi-rank engine; `launch.sh check` curls /v2/health/ready and the generate endpoint).
    """
    from fathom.deploy.triton import TritonExportOptions, export_triton

    options = TritonExportOptions(tokenizer_dir=tokenizer, model_name=model_name, max_queue_delay_us=max_queue_delay_us,
                                  kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction, force=force)
    path = export_triton(engine, out, options)
    click.echo(f"Wrote {path} (start: {path}/launch.sh; check: {path}/launch.sh check)")


@export_group.command("trtllm-serve")
@click.argument("engine", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default="trtllm-serve.yaml", show_default=True,
              help="Where to write the --extra_llm_api_options YAML the command reads.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Tokenizer directory [default: the engine's, else its checkpoint's].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address trtllm-serve binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@json_option
def trtllm_serve(engine, out, tokenizer, host, port, force, as_json):
    """Print the trtllm-serve command (tensorrt-llm 1.2.1) for ENGINE and write its extra-options YAML.

    \b
    fathom export trtllm-serve ./engine --out serve.yaml --host 0.0.0.0
    """
    from fathom.deploy.trtllm_serve import trtllm_serve_launch, write_extra_options

    launch = trtllm_serve_launch(engine, out, tokenizer=tokenizer, host=host, port=port)
    path = write_extra_options(launch, force=force)
    if as_json:
        return emit_json(launch.to_dict())
    click.echo(f"extra options written to {path}", err=True)
    click.echo(launch.command_line())


@export_group.command("onnx")
@click.argument("model")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Dtype of the weights, the KV cache and the activations [default: the model's]; onnxruntime "
                   "(--executor onnx) runs float16 and float32, bfloat16 is for TensorRT.")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} [default: {DEFAULT_OPSET}, the newest TensorRT 10.0 parses].")
@click.option("--max-seq-len", type=click.IntRange(2), default=None,
              help="Positions the graph's RoPE table holds, and the trtexec profiles' sequence length, at most the "
                   f"model's max_position_embeddings [default: {DEFAULT_MAX_SEQ_LEN}, or max_position_embeddings "
                   "when smaller].")
@click.option("--max-batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Sequences of the printed trtexec decode profile.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option
def export_onnx_cmd(model, out, dtype, opset, max_seq_len, max_batch_size, force, as_json):
    """Export MODEL as one ONNX graph with the KV cache as inputs and outputs, into OUT.

    MODEL: a Hugging Face directory, an unquantized fathom checkpoint, `demo` or random:<preset>.
    Inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/value; outputs logits,
    present.{i}.key/value; batch, sequence and past-sequence axes are dynamic, and the same graph runs
    prefill (empty past) and decode. OUT gets model.onnx (+ model.onnx.data when the weights come near
    protobuf's 2 GiB limit), the tokenizer files and fathom-onnx.json; nothing is left behind on error.
    Prints the trtexec command that builds a TensorRT engine with prefill and decode profiles for
    --max-seq-len tokens. Run a float16 or float32 graph with onnxruntime: fathom generate OUT
    --executor onnx (bfloat16 graphs are for TensorRT).

    \b
        fathom export onnx demo ./demo-onnx --dtype float32
        fathom export onnx ./Fathom-R1-14B ./fathom-onnx --dtype float16     # onnxruntime or TensorRT
        fathom export onnx ./Fathom-R1-14B ./fathom-onnx-bf16 --dtype bfloat16  # TensorRT (trtexec) only
    """
    from fathom.build.sources import resolve_model
    from fathom.deploy.trtexec import command_line, trtexec_command
    from fathom.runtime.onnx_export import OnnxExportOptions, export_onnx

    options = OnnxExportOptions(dtype=dtype, opset=opset, max_seq_len=max_seq_len, force=force)
    result = export_onnx(resolve_model(model), out, options)
    argv = trtexec_command(result["graph"], f"{result['out']}/model.plan", result["inputs"], result["max_seq_len"],
                           max_batch_size)
    if as_json:
        return emit_json({**result, "trtexec": argv})
    gb = sum(f["bytes"] for f in result["files"]) / 1e9
    click.echo(f"Wrote {result['out']} ({result['dtype']}, opset {result['opset']}, {gb:.2f} GB"
               f"{', external data' if result['external_data'] else ''}; {result['seconds']:.1f} s)", err=True)
    click.echo(f"TensorRT engine (profile 0: prefill one prompt, profile 1: decode {max_batch_size} sequences, "
               f"{result['max_seq_len']} tokens each):", err=True)
    click.echo(command_line(argv))


COMMANDS = [export_group]
