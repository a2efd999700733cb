"""The accuracy cost of a quantized (or otherwise different) model: candidate vs base, token by token.

Over a token set (fathom.build.quant.calib_data: builtin = held-out demo-task text, or a JSONL
file), both models see the same sequences with teacher forcing; per position we compare the
next-token distributions:
- KL(base || candidate) in nats: mean, p99 and max over positions;
- top-1 agreement: the fraction of positions where both models' argmax token is the same;
- perplexity of each model on the sequences' actual next tokens.
With a tokenizer (the embedded demo model) also the demo task's accuracy: greedy answers to
held-out fathom.runtime.arith problems, graded by the last \\boxed{}. Without one it is skipped and
the reason recorded.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fathom.build.precision import dtype_word

from .model import CausalAttention


@dataclass(frozen=True)
class QualityOptions:
    data: str = "builtin"  # FILE.jsonl or builtin (held-out demo problems; random tokens without a tokenizer)
    sequences: int = 32
    seq_len: int = 256
    seed: int = 0
    task_problems: int = 64  # held-out demo problems for task accuracy (0: skip)
    max_new_tokens: int = 96
    dtype: str = "float32"
    device: str = "cpu"


@torch.inference_mode()
def sequence_logits(model, ids: list[int]) -> torch.Tensor:
    """One sequence, teacher-forced, no cache (K/V rounded to the model's KV cache format) -> logits (T, V) float32."""
    x = torch.tensor([ids], device=model.device)
    positions = torch.arange(len(ids), device=model.device)[None]
    return model(x, positions, CausalAttention(model.kv_quant))[0].float()


def _summary(kl: torch.Tensor, agree: torch.Tensor, nll_base: torch.Tensor, nll_cand: torch.Tensor) -> dict:
    kl = kl.double()
    return {
        "tokens": int(kl.numel()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(torch.quantile(kl, 0.99)),
        "kl_max": float(kl.max()),
        "top1_agreement": float(agree.double().mean()),
        "ppl_base": math.exp(float(nll_base.double().mean())),
        "ppl_candidate": math.exp(float(nll_cand.double().mean())),
    }


def compare_logits(base, candidate, sequences: list[list[int]], completion_starts: list[int] | None = None,
                   progress: bool = False) -> dict:
    """KL / top-1 / perplexity metrics of `candidate` against `base` over `sequences`.

    With `completion_starts` (index of each sequence's first completion token) the same metrics
    are also given for the positions that predict completion tokens only (`completion`): the demo
    model was trained on answers, its predictions over prompt text are close to arbitrary.
    """
    from tqdm import tqdm

    per_pos: list[tuple[torch.Tensor, ...]] = []  # (kl (T,), agree (T,), nll_base (T-1,), nll_cand (T-1,))
    for ids in tqdm(sequences, desc="quality", unit="seq", disable=not progress, file=sys.stderr):
        lb = F.log_softmax(sequence_logits(base, ids), dim=-1)  # (T, V)
        lc = F.log_softmax(sequence_logits(candidate, ids).to(lb.device), dim=-1)
        target = torch.tensor(ids[1:], device=lb.device)[:, None]  # (T-1, 1)
        per_pos.append(((lb.exp() * (lb - lc)).sum(dim=-1).clamp_min(0), lb.argmax(-1) == lc.argmax(-1),
                        -lb[:-1].gather(1, target).squeeze(1), -lc[:-1].gather(1, target).squeeze(1)))
    metrics = _summary(*(torch.cat(parts) for parts in zip(*per_pos)))
    if completion_starts is not None:
        # Position t predicts token t + 1: completion tokens start..T-1 are predicted at start-1..T-2.
        cut = [(kl[s - 1:-1], agree[s - 1:-1], nb[s - 1:], nc[s - 1:])
               for (kl, agree, nb, nc), s in zip(per_pos, completion_starts)]
        metrics["completion"] = _summary(*(torch.cat(parts) for parts in zip(*cut)))
    return metrics


def task_accuracy(model, tokenizer, problems, max_new_tokens: int) -> dict:
    """Greedy answers to demo-task problems (one static batch), graded like the model card."""
    from .reference import ReferenceExecutor
    from .task_eval import answer_problems

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    executor = ReferenceExecutor(model, eos_ids=model.cfg.eos_token_ids or eos)
    result = answer_problems(executor, tokenizer, problems, max_new_tokens, batch_size=max(1, len(problems)))
    return {"correct": sum(result.correct), "problems": len(problems), "accuracy": result.accuracy,
            "answers": [c.answer for c in result.completions]}


def _load(spec: str, options: QualityOptions, tokenizer_dir):
    from fathom.build.sources import resolve_model

    from .loader import load_model

    source = resolve_model(spec, tokenizer=tokenizer_dir)
    model = load_model(source, dtype=options.dtype, device=options.device, max_seq_len=options.seq_len
                       + options.max_new_tokens + 512)
    return source, model


def _describe(source, model) -> dict:
    from .quant_linear import describe_model_precision

    info = {"spec": source.spec, "kind": source.kind, "dtype": dtype_word(model.dtype)}
    return {**info, **describe_model_precision(model)}


def run_quality(base_spec: str, candidate_spec: str, options: QualityOptions, tokenizer_dir=None,
                progress: bool = False) -> dict:
    """Load both models, compare them; returns {"base", "candidate", "parameters", "metrics"}."""
    from fathom.build.errors import ConfigError
    from fathom.build.quant.calib_data import load_token_set

    base_src, base = _load(base_spec, options, tokenizer_dir)
    cand_src, cand = _load(candidate_spec, options, tokenizer_dir)
    if base.cfg.vocab_size != cand.cfg.vocab_size:
        raise ConfigError(f"{candidate_spec}: vocab_size {cand.cfg.vocab_size}, base {base_spec} has "
                          f"{base.cfg.vocab_size}; the two models must share a vocabulary")
    tok_dir = base_src.tokenizer_dir or cand_src.tokenizer_dir
    tokenizer = None
    if tok_dir is not None:
        from .chat import load_tokenizer

        tokenizer = load_tokenizer(tok_dir, base_spec)
    tokens = load_token_set(options.data, options.sequences, options.seq_len, options.seed,
                            base.cfg.vocab_size, tokenizer, split="heldout")
    metrics = compare_logits(base, cand, tokens.sequences, tokens.completion_starts, progress)
    task = _task(base, cand, tokenizer, options)
    return {"base": _describe(base_src, base), "candidate": _describe(cand_src, cand),
            "parameters": {**asdict(options), "token_source": tokens.source, "sequences_used": len(tokens.sequences)},
            "metrics": {**metrics, **task}}


def _task(base, cand, tokenizer, options: QualityOptions) -> dict:
    skipped = None
    if options.task_problems <= 0:
        skipped = "--task-problems 0"
    elif tokenizer is None:
        skipped = "no tokenizer (task accuracy needs the demo model's tokenizer)"
    elif not getattr(tokenizer, "chat_template", None):
        skipped = "tokenizer has no chat template"
    if skipped:
        return {"task_accuracy_base": None, "task_accuracy_candidate": None, "task_accuracy_delta": None,
                "task_skipped": skipped}
    from .arith import make_problems

    problems = make_problems(options.task_problems, options.seed, "heldout")
    b = task_accuracy(base, tokenizer, problems, options.max_new_tokens)
    c = task_accuracy(cand, tokenizer, problems, options.max_new_tokens)
    return {"task_problems": len(problems), "task_accuracy_base": b["accuracy"],
            "task_accuracy_candidate": c["accuracy"], "task_accuracy_delta": c["accuracy"] - b["accuracy"],
            "task_answers_differ": sum(x != y for x, y in zip(b["answers"], c["answers"])), "task_skipped": None}


def quality_record(result: dict) -> dict:
    """The shared run-record envelope (fathom.runtime.records) with kind "quality"."""
    from .records import environment, make_record

    cand = result["candidate"]
    env = environment({"executor": "reference", "dtype": cand["dtype"], "device": result["parameters"]["device"],
                       "precision": cand["precision"], "kv_cache_format": cand["kv_cache_format"],
                       "quantization": cand["quantization"]})
    return make_record("quality", {"base": result["base"], "candidate": cand}, result["parameters"],
                       result["metrics"], env)
