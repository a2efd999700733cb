"""The plan as human-readable text: what `fathom plan`, `fathom build --dry-run` and the demo print."""

from __future__ import annotations

from .gpus import GIB
from .planner import BANDWIDTH_EFFICIENCY, COMPUTE_EFFICIENCY, KV_CACHE_FRACTION, Plan


def render_plan(p: Plan) -> list[str]:
    """The plan as aligned text lines."""
    d, g = p.deployment, p.gpu
    gib = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    memory = [
        ("weights (largest rank)", gib(p.weights_per_rank_bytes), f"whole model {p.weights_total_bytes / 1e9:.1f} GB"),
        ("activations/workspace (est.)", gib(p.activation_bytes), f"{d.max_num_tokens} tokens"),
        ("runtime overhead (est.)", gib(p.runtime_overhead_bytes), ""),
        (f"KV budget ({KV_CACHE_FRACTION:.0%} of free)", gib(p.kv_budget_bytes), ""),
        ("KV per token", f"{p.kv_bytes_per_token_rank / 1024:8.1f} KiB", f"whole model {p.kv_bytes_per_token_model / 1024:.0f} KiB"),
        (f"KV per {d.seq_len:,}-token sequence", gib(p.kv_bytes_per_sequence_rank), ""),
    ]
    lines = [
        f"{p.model_name} ({p.num_params / 1e9:.2f} B params) on {g.name} "
        f"({g.memory_gib:g} GiB, {g.memory_bandwidth_tb_s:g} TB/s, sm{g.sm})",
        f"  {d.precision} weights, {d.kv_cache} KV cache, tp={d.tp} pp={d.pp}, {d.seq_len:,}-token sequences, "
        f"max_num_tokens={d.max_num_tokens}, max_batch_size={d.max_batch_size}",
        "  memory per GPU",
        *[f"    {label:<33}{value}" + (f"   ({extra})" if extra else "") for label, value, extra in memory],
        f"  concurrent {d.seq_len:,}-token sequences: {p.concurrent_sequences}" + ("" if p.fits else "  -> DOES NOT FIT"),
    ]
    if p.fits:
        lines.append(f"  roofline: ceiling (datasheet) | expected ({BANDWIDTH_EFFICIENCY:.0%} bandwidth, "
                     f"{COMPUTE_EFFICIENCY:.0%} compute)")
        rows = [("decode, batch 1", p.decode_batch1, "tok/s"),
                (f"decode, batch 1 at {d.seq_len:,} ctx", p.decode_batch1_full_context, "tok/s"),
                (f"decode, batch {p.decode_batch} (ctx {d.seq_len // 2:,})", p.decode_max_batch, "tok/s"),
                (f"prefill {d.seq_len:,}-token prompt", p.prefill, "tok/s"),
                (f"TTFT {d.seq_len:,}-token prompt", p.ttft_ms, "ms")]
        lines += [f"    {label:<33}{e.ceiling:>10,.1f} | {e.expected:>10,.1f} {unit}" for label, e, unit in rows]
    lines += [f"  note: {n}" for n in p.notes]
    return lines
