"""CPU decode attention of the torch executor (not a test): one layer of one decode step, per way of
reading the paged KV cache, at short and long contexts. The table in fathom.runtime.paged_kv's
docstring comes from this script.

Ways (each writes the step's K/V first; the per-step planning is left out): `PagedAttention`
itself, gathering the context into its reused buffer (any batch) and reading
a lone sequence's consecutive blocks in place (batch 1); and, for comparison, the gather into a
fresh tensor per layer and a head-major gather followed by baddbmm / softmax / bmm. Blocks of a
batch interleave in the pool, as they do when sequences grow together. Float32, 1 intra-op thread;
each case reports the minimum over rounds of the mean time per call (the dev CPU is shared).

    python -m fathom.profiles.attention_cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import time

CASES = (("tiny", 1, 160), ("tiny", 8, 160), ("tiny", 1, 2048), ("tiny", 8, 2048),
         ("fathom-r1-14b", 1, 2048), ("fathom-r1-14b", 8, 2048), ("fathom-r1-14b", 1, 16384))


def best_us(fn, calls: int, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls)
    return min(times) * 1e6


def case(preset_name: str, n: int, S: int, rounds: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fathom.build.config import preset
    from fathom.runtime.paged_kv import PagedAttention, PagedKVCache

    cfg = dataclasses.replace(preset(preset_name), num_hidden_layers=1)
    Hq, Hkv, D, bs = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, 16
    per_seq = S // bs
    cache = PagedKVCache(cfg, bs, n * per_seq + 1, torch.float32, torch.device("cpu"), n, S)
    for i in range(n):
        for j in range(per_seq):
            cache.set_block(i, j, 1 + j * n + i if n > 1 else 1 + j)
    cache.kv.normal_()
    gen = torch.Generator().manual_seed(0)
    q, kv = torch.randn(n, Hq, D, generator=gen), torch.randn(n, 2, Hkv, D, generator=gen)
    rows = torch.arange(n)
    lens = torch.full((n,), S)
    lens[0] = S - 1  # ragged: a mask
    new_slots = cache.slot_table[rows, lens - 1]

    def paged(first_slot: int):
        attn = PagedAttention(cache)
        attn.plan_step(new_slots, [])
        attn.plan_decode(rows, lens if n > 1 else None, S, first_slot)  # once per step, not per layer
        return lambda: attn.attend(0, q, kv)

    slots = cache.slot_table[:, :S].reshape(-1)
    mask = None if n == 1 else torch.where(torch.arange(S) >= lens[:, None], float("-inf"), 0.0)[:, None, None]

    def fresh_gather():
        cache.write(0, new_slots, kv)
        past = cache.layers[0].index_select(0, slots).view(n, S, 2, Hkv, D)
        F.scaled_dot_product_attention(q.view(n, Hkv, Hq // Hkv, D), past[:, :, 0].transpose(1, 2),
                                       past[:, :, 1].transpose(1, 2), attn_mask=mask)

    index = (slots.view(n, 1, 1, S) * (2 * Hkv) + torch.arange(2).view(1, 1, 2, 1) * Hkv
             + torch.arange(Hkv).view(1, Hkv, 1, 1)).view(-1)  # rows of D values, head-major
    bias = (mask if mask is not None else torch.zeros(n, 1, 1, S)).expand(n, Hkv, 1, S).reshape(n * Hkv, 1, S)

    def head_major_bmm():
        cache.write(0, new_slots, kv)
        k, v = cache.layers[0].view(-1, D).index_select(0, index).view(n * Hkv, 2, S, D).unbind(1)
        scores = torch.baddbmm(bias, q.view(n, Hkv, Hq // Hkv, D).reshape(n * Hkv, -1, D), k.transpose(1, 2),
                               alpha=D ** -0.5)
        torch.bmm(scores.softmax(-1), v)

    calls = max(2, int(3e5 / (n * S * Hkv * D / 16 + 1000)))
    ways = {"gather_reused_buffer_sdpa": paged(-1), "gather_fresh_tensor_sdpa": fresh_gather,
            "head_major_gather_bmm": head_major_bmm}
    if n == 1:
        ways["in_place_sdpa"] = paged(bs)
    with torch.inference_mode():
        us = {name: round(best_us(fn, calls, rounds), 1) for name, fn in ways.items()}
    return {"model": preset_name, "kv_heads": Hkv, "group": Hq // Hkv, "head_dim": D, "batch": n, "context": S,
            "kv_mb_per_layer": round(n * S * 2 * Hkv * D * 4 / 1e6, 2), "us": us}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for preset_name, n, S in CASES:
        print(case(preset_name, n, S, args.rounds), flush=True)


if __name__ == "__main__":
    main()
