"""`fathom convert`: a HF Qwen2 model -> a TensorRT-LLM 1.2.1 checkpoint, streamed, validated, atomic.

Pipeline: `plan_conversion` (validate the source and the mapping, list every tensor of every rank
file with its shape and dtype; nothing is written if this raises) -> `convert` (for each tensor:
read its HF parts lazily, concatenate, transform, split per tp rank, append to the rank files, whose
headers were written from the plan). One unsharded tensor is in memory at a time, so peak memory is
about twice the largest tensor whatever the model size. Everything goes to a temp sibling of OUT,
renamed at the end (build/atomic.py); NaN/Inf found mid-way leaves nothing behind.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_output_dir
from .checkpoint import trtllm_config, write_config
from .config import DEFAULT_MAX_SEQ_LEN, ModelConfig
from .errors import WeightsError
from .layout import RankPlan, TensorSpec, plan_ranks
from .manifest import build_manifest, file_records, write_manifest
from .mapping import Mapping
from .safetensors_io import SafetensorsWriter, WriteBehind, encode_header
from .sources import ModelSource
from .tp_split import split_shards
from .precision import DTYPES, torch_dtype
from .quant.quantizer import trtllm_padding
from .transform import CastTransform, TensorTransform, checkpoint_specs
from .weight_map import IGNORED_HF_SUFFIXES, hf_shapes, trtllm_sources
from .weights import check_finite, check_tensors

DTYPE_CHOICES = ("auto", *DTYPES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
DISK_MARGIN_BYTES = 64 << 20
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ConvertOptions:
    dtype: str = "auto"
    tp: int = 1
    pp: int = 1
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    force: bool = False
    progress: bool = False


@dataclass(frozen=True)
class ConvertPlan:
    source: ModelSource
    cfg: ModelConfig
    mapping: Mapping
    dtype: str
    max_seq_len: int
    transform: TensorTransform
    specs: list[tuple[TensorSpec, list[TensorSpec]]]  # (base tensor, tensors stored for it), write order
    parts: dict[str, tuple[str, ...]]  # base TRT-LLM name -> HF tensors concatenated on dim 0
    ranks: list[RankPlan]
    ignored_source_tensors: list[str] = field(default_factory=list)

    @property
    def file_bytes(self) -> int:
        """Bytes of all rank files (headers included), for the free-disk check."""
        return sum(len(encode_header(r.entries())) + r.nbytes for r in self.ranks)

    def config(self) -> dict[str, Any]:
        return trtllm_config(self.cfg, self.mapping, self.dtype, self.max_seq_len, self.transform.qcfg)


def resolve_dtype(requested: str, cfg: ModelConfig) -> str:
    """TRT-LLM's `--dtype auto` (convert_checkpoint.py / convert_utils.infer_dtype): the source dtype,
    except float32, which becomes float16."""
    if requested not in DTYPE_CHOICES:
        raise WeightsError(f"--dtype {requested!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    if requested != "auto":
        return requested
    return "float16" if cfg.torch_dtype == "float32" else cfg.torch_dtype


def plan_conversion(source: ModelSource, options: ConvertOptions,
                    transform: TensorTransform | None = None) -> ConvertPlan:
    """Validate everything that can be checked without reading tensor data and plan every rank file."""
    cfg = source.config
    mapping = Mapping(options.tp, options.pp)
    mapping.check_model(cfg)
    if not isinstance(options.max_seq_len, int) or options.max_seq_len < 1:
        raise WeightsError(f"--max-seq-len {options.max_seq_len!r}: expected a positive integer")
    dtype = resolve_dtype(options.dtype, cfg)
    tensors = source.hf_tensors()
    ignored = check_tensors(tensors, hf_shapes(cfg), where=source.spec, ignored_suffixes=IGNORED_HF_SUFFIXES)
    not_float = sorted(n for n in hf_shapes(cfg) if tensors.dtype(n) not in FLOAT_DTYPES)
    if not_float:
        raise WeightsError(f"{source.spec}: tensors must be float32/float16/bfloat16, got "
                           + ", ".join(f"{n} {tensors.dtype(n)}" for n in not_float[:4]))
    transform = transform or CastTransform()
    specs = checkpoint_specs(cfg, torch_dtype(dtype), transform)
    ranks = plan_ranks([s for _, outs in specs for s in outs], cfg, mapping)
    return ConvertPlan(source, cfg, mapping, dtype, options.max_seq_len, transform, specs,
                       trtllm_sources(cfg), ranks, ignored)


def check_free_disk(out: Path, needed_bytes: int) -> None:
    probe = out.absolute().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes + DISK_MARGIN_BYTES:
        raise WeightsError(f"{out}: not enough free disk on {probe} ({free / 1e9:.2f} GB free, "
                           f"the checkpoint needs {needed_bytes / 1e9:.2f} GB)")


def _source_files(source: ModelSource) -> list[Path]:
    if source.kind != "hf":
        return []
    names = ["config.json", "model.safetensors.index.json"]
    files = [source.path / n for n in names if (source.path / n).is_file()]
    return files + sorted(source.path.glob("*.safetensors"))


class _Hasher(threading.Thread):
    """Hashes the source files while the conversion runs (hashlib releases the GIL on large reads)."""

    def __init__(self, files: list[Path], root: Path | None):
        super().__init__(daemon=True)
        self.files, self.root = files, root
        self.records: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.records = file_records(self.files, self.root) if self.files else []
        except BaseException as e:  # re-raised in the main thread by result()
            self.error = e

    def result(self) -> list[dict]:
        self.join()
        if self.error is not None:
            raise WeightsError(f"cannot hash source files ({self.error})") from self.error
        return self.records


def _copy_tokenizer(source: ModelSource, out: Path) -> list[Path]:
    copied = []
    for name in TOKENIZER_FILES:
        for folder in (source.tokenizer_dir, source.path):
            if folder is not None and (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
                copied.append(out / name)
                break
    return copied


def _progress(total_bytes: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="convert",
                disable=not enabled, dynamic_ncols=True)


def _write_tensors(plan: ConvertPlan, writers: dict[int, SafetensorsWriter], progress) -> None:
    """Produce every planned tensor once and append its shards to the rank files of its stage."""
    tensors = plan.source.hf_tensors()
    holders: dict[str, list[tuple[RankPlan, str]]] = {}  # stored name -> (rank file, name in it)
    for r in plan.ranks:
        for t in r.tensors:
            holders.setdefault(t.spec.name, []).append((r, t.local_name))
    total = sum(len(outs) for _, outs in plan.specs)
    done = 0
    for base, outs in plan.specs:
        parts = []
        for hf_name in plan.parts[base.name]:
            part = tensors.get(hf_name)
            check_finite(hf_name, part, plan.source.spec)
            parts.append(part)
        full = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (sum of part rows, ...)
        del parts
        produced = plan.transform.apply(base, full)
        del full
        for spec in outs:
            t = produced.pop(spec.name)
            if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
                raise WeightsError(f"transform produced '{spec.name}' {tuple(t.shape)} {t.dtype}, "
                                   f"planned {spec.shape} {spec.dtype}")
            if spec.dtype == torch.float16:  # a finite bf16/fp32 value can overflow fp16's range
                check_finite(spec.name, t, f"{plan.source.spec} (as float16)")
            shards = split_shards(spec.kind, t, plan.mapping.tp_size, plan.cfg)
            for rank_plan, local in holders[spec.name]:
                progress.update(writers[rank_plan.info.rank].write(local, shards[rank_plan.info.tp_rank]))
            done += 1
            progress.set_postfix_str(f"tensor {done}/{total}", refresh=False)
            del t, shards


def convert(source: ModelSource, out: str | Path, options: ConvertOptions = ConvertOptions(),
            transform: TensorTransform | None = None) -> dict[str, Any]:
    """Write the checkpoint; return a summary (also recorded in OUT/fathom.json)."""
    out = Path(out)
    if source.path is not None:
        src_dir, out_dir = source.path.resolve(), out.resolve()
        if out_dir == src_dir or out_dir in src_dir.parents:
            raise WeightsError(f"{out}: would replace the source model {source.path}; choose another OUT")
    plan = plan_conversion(source, options, transform)
    check_free_disk(out, plan.file_bytes)
    t0 = time.perf_counter()
    hasher = _Hasher(_source_files(source), source.path)
    with atomic_output_dir(out, force=options.force) as tmp:
        hasher.start()
        writers: dict[int, SafetensorsWriter] = {}
        try:
            with WriteBehind() as sink:
                for r in plan.ranks:
                    writers[r.info.rank] = SafetensorsWriter(tmp / r.info.file_name, r.entries(), sink=sink)
                with _progress(sum(r.nbytes for r in plan.ranks), options.progress) as progress:
                    _write_tensors(plan, writers, progress)
                sha = {rank: w.close() for rank, w in writers.items()}
        finally:
            for w in writers.values():
                w.abort()
        config_path = write_config(tmp, plan.config())
        extra_files = [config_path] + _copy_tokenizer(source, tmp)
        ranks = [{"rank": r.info.rank, "tp_rank": r.info.tp_rank, "pp_rank": r.info.pp_rank,
                  "layers": [r.info.layers.start, r.info.layers.stop], "file": r.info.file_name,
                  "tensor_count": len(r.tensors), "bytes": writers[r.info.rank].nbytes, "sha256": sha[r.info.rank]}
                 for r in plan.ranks]
        manifest = build_manifest(
            source={"spec": source.spec, "kind": source.kind, "files": hasher.result()},
            model={"architecture": "Qwen2ForCausalLM", "bos_token_id": plan.cfg.bos_token_id,
                   "eos_token_id": plan.cfg.eos_token_id, "num_params": plan.cfg.num_params()},
            dtype=plan.dtype, quantization=plan.transform.qcfg.to_trtllm_dict(), mapping=plan.mapping.to_dict(),
            max_seq_len=plan.max_seq_len, ranks=ranks, files=file_records(extra_files, tmp),
            ignored_source_tensors=plan.ignored_source_tensors)
        write_manifest(tmp, manifest)
    seconds = time.perf_counter() - t0
    total = sum(r["bytes"] for r in ranks)
    qcfg = plan.transform.qcfg
    return {"out": str(out.absolute()), "dtype": plan.dtype, "precision": qcfg.weights(plan.dtype).value,
            "kv_cache": qcfg.kv_cache.value, "mapping": plan.mapping.to_dict(),
            "max_seq_len": plan.max_seq_len, "quantization": manifest["quantization"], "ranks": ranks,
            "total_bytes": total, "seconds": round(seconds, 3),
            "write_mb_per_s": round(total / 1e6 / seconds, 1) if seconds > 0 else None,
            "tokenizer_files": [p.name for p in extra_files[1:]],
            "ignored_source_tensors": plan.ignored_source_tensors,
            "trtllm_build_refusal": trtllm_padding(qcfg, plan.cfg, plan.mapping.tp_size)}
