"""Build-stage commands: convert, inspect, verify."""

from __future__ import annotations

import sys

import click

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.precision import AWQ_GROUP_SIZES, DEFAULT_GROUP_SIZE, DTYPES, KvCacheFormat, WeightFormat

from .common import emit_json, json_option


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} GB"


def _layers(r: dict) -> str:
    start, stop = r["layers"]
    return f"layers {start}-{stop - 1}" if stop > start else "no layers"


@click.command("convert")
@click.argument("src")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["auto", *DTYPES]), default="auto", show_default=True,
              help="Checkpoint dtype (activations and unquantized tensors). auto = the source dtype, float32 "
                   "sources become float16 (as TRT-LLM's convert_checkpoint.py). float32 is a valid TRT-LLM "
                   "dtype, useful for exact comparisons.")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline-parallel size.")
@click.option("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, show_default=True,
              help="Written as seq_length in config.json.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--precision", type=click.Choice([f.value for f in WeightFormat]), default=None,
              help="Weight format [default: unquantized, in --dtype]. bf16/fp16/fp32: unquantized in that dtype; "
                   "fp8: e4m3 weights+activations, per-tensor scales; w8a16: int8 weights quantized by TRT-LLM at "
                   "load (16-bit stored); w4a16_awq: int4 weights, activation-aware scales, groups of 128.")
@click.option("--kv-cache", type=click.Choice([f.value for f in KvCacheFormat]), default=None,
              help="KV cache format [default: fp8 with --precision fp8, else model]. model = the checkpoint dtype.")
@click.option("--exclude", default=None,
              help="Comma-separated modules or fnmatch patterns left unquantized (default: lm_head), "
                   "e.g. lm_head,transformer.layers.0.mlp.proj,'*.attention.dense'.")
@click.option("--calib-data", default="builtin", show_default=True,
              help="Calibration text: FILE.jsonl ({\"text\"} or {\"input_ids\"} per line) or builtin.")
@click.option("--calib-samples", type=click.IntRange(1), default=64, show_default=True)
@click.option("--calib-seq-len", type=click.IntRange(2), default=256, show_default=True)
@click.option("--calib-seed", type=int, default=0, show_default=True, help="Same seed, same scales.")
@click.option("--awq-group-size", type=click.Choice([str(g) for g in AWQ_GROUP_SIZES]), default=str(DEFAULT_GROUP_SIZE),
              show_default=True,
              help="Input channels per int4 scale (TRT-LLM's kernels implement 64 and 128).")
@json_option
def convert_cmd(src, out, dtype, tp, pp, max_seq_len, force, precision, kv_cache, exclude, calib_data, calib_samples,
                calib_seq_len, calib_seed, awq_group_size, as_json):
    """Convert SRC (HF Qwen2 dir, `demo`, `random:<preset>`) into a TensorRT-LLM 1.2.1 checkpoint OUT.

    OUT gets config.json, rank{N}.safetensors (N = pp_rank * tp + tp_rank), the tokenizer files and
    fathom.json (hashes, source, mapping). Nothing is left behind on error or Ctrl-C.

    \b
        fathom convert ./Fathom-R1-14B ./ckpt --precision bf16 --tp 2
        fathom convert ./Fathom-R1-14B ./ckpt-fp8 --precision fp8 --kv-cache fp8
        fathom convert demo ./demo-ckpt
    """
    from fathom.build.convert import ConvertOptions
    from fathom.build.errors import ConfigError
    from fathom.build.sources import resolve_model

    source = resolve_model(src)
    if source.kind not in ("hf", "random"):
        raise ConfigError(f"{src}: is a {source.kind} directory; convert needs a Hugging Face model, `demo` or random:<preset>")
    from fathom.build.quant.calibrate import CalibConfig
    from fathom.build.quant.pipeline import QuantOptions, checkpoint_precision, convert_quantized, parse_exclude

    weights, dtype = checkpoint_precision(precision, dtype)
    quant_options = QuantOptions(weights, KvCacheFormat(kv_cache) if kv_cache else None, parse_exclude(exclude),
                                 int(awq_group_size),
                                 CalibConfig(calib_data, calib_samples, calib_seq_len, calib_seed))
    result = convert_quantized(source, out, ConvertOptions(dtype=dtype, tp=tp, pp=pp, max_seq_len=max_seq_len,
                                                           force=force, progress=sys.stderr.isatty()), quant_options)
    if result["trtllm_build_refusal"]:
        click.echo(f"warning: TensorRT-LLM cannot build this checkpoint: {result['trtllm_build_refusal']}; the torch "
                   f"and reference executors run it", err=True)
    if as_json:
        emit_json(result)
        return
    m = result["mapping"]
    click.echo(f"Wrote {result['out']}: precision {result['precision']}, kv cache {result['kv_cache']}, "
               f"dtype {result['dtype']}, tp {m['tp_size']} x pp {m['pp_size']}, "
               f"{_gb(result['total_bytes'])} in {result['seconds']:.1f} s ({result['write_mb_per_s']} MB/s)")
    for r in result["ranks"]:
        click.echo(f"  {r['file']:<20} tp {r['tp_rank']} pp {r['pp_rank']}  {_layers(r):<14} "
                   f"{r['tensor_count']:>5} tensors  {_gb(r['bytes'])}")
    q = result["quantization"]
    if q["quant_algo"] or q["kv_cache_quant_algo"]:
        calib = (result["quantization_report"] or {}).get("calibration")
        click.echo(f"  quantization: {q['quant_algo'] or 'none'}, kv cache {q['kv_cache_quant_algo'] or 'unquantized'}, "
                   f"excluded {', '.join(q['exclude_modules'] or [])}"
                   + (f"; calibrated on {calib['sequences']} x {calib['seq_len']} tokens ({calib['source']}, "
                      f"seed {calib['seed']})" if calib else "; no calibration needed"))
    if result["ignored_source_tensors"]:
        click.echo(f"  ignored source tensors: {', '.join(result['ignored_source_tensors'])}")


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@json_option
def inspect_cmd(path, as_json):
    """Summarize a checkpoint (config, mapping, per-rank bytes, quantization) or an engine directory."""
    from fathom.build.verify import inspect_path

    info = inspect_path(path)
    if as_json:
        emit_json(info)
        return
    if info["kind"] == "engine":
        for key, value in info.items():
            click.echo(f"{key}: {value}")
        return
    m, q, model = info["mapping"], info["quantization"], info["model"]
    click.echo(f"{info['path']}: TensorRT-LLM checkpoint, {info['architecture']}, {info['dtype']}")
    click.echo(f"  model: {model['num_hidden_layers']} layers, hidden {model['hidden_size']}, heads "
               f"{model['num_attention_heads']}/{model['num_key_value_heads']} kv, vocab {model['vocab_size']}, "
               f"rope_theta {model['rope_theta']:g}, tied {model['tie_word_embeddings']}, "
               f"{model['num_params'] / 1e9:.2f} B params")
    click.echo(f"  mapping: tp {m['tp_size']} x pp {m['pp_size']} = {m['world_size']} ranks; "
               f"seq_length {info['max_seq_len']}")
    click.echo(f"  precision {info['precision']}, kv cache {info['kv_cache']} (quant_algo {q['quant_algo']}, "
               f"kv_cache_quant_algo {q['kv_cache_quant_algo']})")
    for r in info["ranks"]:
        click.echo(f"  {r['file']:<20} tp {r['tp_rank']} pp {r['pp_rank']}  {_layers(r):<14} {_gb(r['bytes'])}")
    click.echo(f"  total: {_gb(info['total_bytes'])}")
    man = info["manifest"]
    click.echo(f"  made by fathom {man['fathom_version']} at {man['created_at']} from {man['source']['spec']}"
               if man else "  no fathom.json (not made by fathom convert)")


@click.command("verify")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@json_option
def verify_cmd(path, as_json):
    """Check a checkpoint: config.json keys, tensor names/shapes/dtypes per rank, file hashes (fathom.json)."""
    from fathom.build.verify import verify_checkpoint

    report = verify_checkpoint(path)
    if as_json:
        emit_json(report)
        return
    hashes = (f"{report['files_hashed']} file hashes match fathom.json" if report["hashes_checked"]
              else "no fathom.json, file hashes NOT checked")
    click.echo(f"OK {report['path']}: {report['ranks']} rank file(s), {report['tensors']} tensors match "
               f"config.json; {hashes}")


COMMANDS = [convert_cmd, inspect_cmd, verify_cmd]
