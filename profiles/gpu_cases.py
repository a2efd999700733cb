"""The measurements of the GPU check (profiles/gpu_check.py), each a function of its `Plan`.

- `decode_case`, `prefill_case`: one executor's decode steps at a primed context, one long prompt.
- `attention_kernels`: one layer's decode attention over a paged pool with the heads of the plan's
  `layers_model` (Fathom-R1-14B: 40 query and 8 KV heads of 128), per batch and context, by three
  kernels: `gather_sdpa` (fathom.runtime.paged_kv.PagedAttention: index_select of the context, then
  SDPA), `compiled_inplace` (fathom.runtime.compiled_decode.PoolAttention under torch.compile: the
  pool read through the slot table inside the kernels) and `flash_attn_with_kvcache` (flash-attn's
  paged kernel, when it imports; on its own K and V caches in 256-token pages, the page size its
  block_table takes). Per case: median time per call, KV bytes read, their bandwidth, and the
  largest difference from gather_sdpa's output.
- `compiled_decode`: decode steps of `layers_model` (every width of Fathom-R1-14B, 4 layers) at the
  plan's contexts, eager and with compile=True (both with CUDA graphs on CUDA): tok/s, and the first
  step's time at each batch (the compile and the graph capture).
"""

from __future__ import annotations

import functools
import random
import statistics
import time
from typing import TYPE_CHECKING

from fathom.build.config import DEFAULT_MAX_SEQ_LEN

if TYPE_CHECKING:
    from .gpu_check import Plan

KV_BLOCK_SIZE = 16  # the torch executor's default block size
FLASH_PAGE_TOKENS = 256  # flash_attn_with_kvcache: page_block_size must be a multiple of 256


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def open_executor(model, plan: Plan, max_num_seqs: int, compile: bool = False):
    from fathom.runtime.torch_executor import TorchExecutor, executor_config

    return TorchExecutor(model, eos_ids=[], max_seq_len=DEFAULT_MAX_SEQ_LEN,
                         config=executor_config(max_num_tokens=plan.max_num_tokens, max_num_seqs=max_num_seqs,
                                                compile=compile))


def decode_case(ex, plan: Plan, batch: int, context: int, weight_bytes: int, copy_bw: float) -> dict:
    """`batch` sequences primed at `context` tokens, then plan.steps timed decode steps."""
    from fathom.runtime.executor import Request
    from fathom.runtime.sampling import SamplingParams

    per_token = ex.cache.bytes_per_token
    need = batch * (context + plan.steps + 2)
    if need > ex.cache.capacity_tokens:
        return {"batch": batch, "context": context, "skipped": f"needs {need} tokens of KV "
                f"({need * per_token / 2**30:.1f} GiB), the cache holds {ex.cache.capacity_tokens}"}
    rng = random.Random(batch * 7 + context)
    for i in range(batch):
        ids = [rng.randrange(ex.config.vocab_size) for _ in range(context)]
        ex.submit(Request(f"d{batch}-{context}-{i}", ids, SamplingParams(max_new_tokens=plan.steps + 2, ignore_eos=True)))
    ex.scheduler.admit()
    for s in ex.scheduler.running:  # prime: blocks for the context, as if it had been prefilled
        ex.scheduler.reserve(s, context, [], [])
        s.num_computed = context - 1
    t = time.perf_counter()
    ex.step()  # first step at this shape: captures its CUDA graph
    first_step_s = time.perf_counter() - t
    times = []
    for _ in range(plan.steps):
        t = time.perf_counter()
        events = ex.step()
        times.append(time.perf_counter() - t)
        assert len(events) == batch
    while ex.has_pending():
        ex.step()
    step_s = statistics.median(times)
    kv_bytes = batch * (context + 1 + plan.steps // 2) * per_token
    bytes_per_step = weight_bytes + kv_bytes
    return {"batch": batch, "context": context, "steps": plan.steps, "step_s": step_s, "step_s_runs": times,
            "first_step_s": first_step_s, "tok_s": batch / step_s, "weight_bytes": weight_bytes,
            "kv_bytes_read": kv_bytes, "bytes_read_per_step": bytes_per_step,
            "achieved_bandwidth_gb_s": bytes_per_step / step_s / 1e9,
            "fraction_of_copy_bandwidth": bytes_per_step / step_s / copy_bw,
            "roofline_tok_s": batch * copy_bw / bytes_per_step}


def prefill_case(ex, plan: Plan) -> dict:
    from fathom.runtime.executor import Request, now
    from fathom.runtime.sampling import SamplingParams

    rng = random.Random(0)
    ids = [rng.randrange(ex.config.vocab_size) for _ in range(plan.prefill_tokens)]
    t0 = now()
    ex.submit(Request("prefill", ids, SamplingParams(max_new_tokens=1, ignore_eos=True)))
    steps, first = 0, None
    while ex.has_pending():
        events = ex.step()
        steps += 1
        first = first or next((e.time_s for e in events if e.token_id is not None), None)
    return {"prompt_tokens": plan.prefill_tokens, "max_num_tokens": plan.max_num_tokens, "steps": steps,
            "seconds": first - t0, "tok_s": plan.prefill_tokens / (first - t0)}


def time_per_call_s(fn, device: str, calls: int = 10, repeats: int = 5) -> float:
    """Median over `repeats` of the mean time of `calls` calls of fn(), after two warm-up calls."""
    fn()
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        times.append((time.perf_counter() - t) / calls)
    return statistics.median(times)


def pool_attend(kv, slot_table, q, new_kv, positions, rows, chunks):
    """One layer of a compiled decode step's attention (fathom.runtime.compiled_decode.pool_attention)."""
    from fathom.runtime.compiled_decode import pool_attention

    return pool_attention(kv, slot_table, None, positions, rows, chunks).attend(0, q, new_kv)


@functools.cache
def compiled_pool_attend():
    import torch

    return torch.compile(pool_attend, fullgraph=True)


def attention_kernels(plan: Plan) -> dict:
    """Decode attention of one layer by each kernel, per (batch, context) of the plan (module docstring)."""
    import torch

    from fathom.build.precision import torch_dtype
    from fathom.build.sources import resolve_model

    cfg = resolve_model(plan.layers_model).config
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    dtype, device = torch_dtype(plan.dtype), plan.device
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError as e:
        flash_attn_with_kvcache, flash_missing = None, f"flash-attn does not import here: {e}"
    out = {"layer": {"model": plan.layers_model, "query_heads": Hq, "kv_heads": Hkv, "head_dim": D,
                     "dtype": plan.dtype, "kv_block_size": KV_BLOCK_SIZE}, "cases": []}
    for batch in plan.kernel_batches:
        for context in plan.kernel_contexts:
            case = {"batch": batch, "context": context,
                    "kv_bytes_read": batch * context * 2 * Hkv * D * dtype.itemsize, "kernels": {}}
            q = torch.randn(batch, Hq, D, dtype=dtype, device=device)
            new_kv = torch.randn(batch, 2, Hkv, D, dtype=dtype, device=device)
            want = None
            for name, (fn, reason) in kernel_calls(cfg, batch, context, q, new_kv, device, dtype,
                                                   flash_attn_with_kvcache).items():
                if fn is None:
                    case["kernels"][name] = {"skipped": reason or flash_missing}
                    continue
                s = time_per_call_s(fn, device)
                case["kernels"][name] = {"us": s * 1e6, "bandwidth_gb_s": case["kv_bytes_read"] / s / 1e9}
                if name != "flash_attn_with_kvcache":  # flash-attn reads K/V of its own (other values)
                    got = fn().float()
                    want = got if want is None else want
                    case["kernels"][name]["max_abs_diff_vs_gather_sdpa"] = (got - want).abs().max().item()
            out["cases"].append(case)
    return out


def kernel_calls(cfg, batch: int, context: int, q, new_kv, device: str, dtype, flash) -> dict:
    """name -> (a call of that kernel on this case, None) or (None, why it cannot run). Every call
    writes the new token's K/V (the same slot each time) and attends over `context` tokens."""
    import dataclasses

    import torch

    from fathom.runtime.compiled_decode import CHUNK_TOKENS
    from fathom.runtime.paged_kv import PagedAttention, PagedKVCache

    blocks = -(-context // KV_BLOCK_SIZE)
    cache = PagedKVCache(dataclasses.replace(cfg, num_hidden_layers=1), KV_BLOCK_SIZE, batch * blocks + 1,
                         dtype, torch.device(device), batch, context)
    cache.kv.normal_()
    order = torch.randperm(batch * blocks, device=device).view(batch, blocks) + 1  # scattered blocks, as in a busy pool
    cache.slot_table.copy_((order[:, :, None] * KV_BLOCK_SIZE + torch.arange(KV_BLOCK_SIZE, device=device)).flatten(1))
    rows = torch.arange(batch, device=device)
    positions = torch.full((batch,), context - 1, device=device)
    attn = PagedAttention(cache)
    attn.plan_step(cache.slot_table[rows, positions], [])
    attn.plan_decode(rows, None, context)
    chunk = CHUNK_TOKENS[torch.device(device).type]
    chunks = torch.empty((max(2, -(-context // chunk)), chunk), dtype=torch.int8, device=device)  # as CompiledDecoder
    for t in (q, new_kv, positions, rows, chunks, cache.slot_table):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    torch._dynamo.maybe_mark_dynamic(cache.kv, 1)  # one graph for every pool size,
    torch._dynamo.maybe_mark_dynamic(cache.slot_table, 1)  # context and batch > 1
    compiled = compiled_pool_attend()
    calls = {"gather_sdpa": (lambda: attn.attend(0, q, new_kv), None),
             "compiled_inplace": (lambda: compiled(cache.kv, cache.slot_table, q, new_kv, positions, rows, chunks),
                                  None)}
    if flash is None or not device.startswith("cuda"):
        calls["flash_attn_with_kvcache"] = (None, None if flash is None else "flash-attn runs on CUDA only")
        return calls
    pages = -(-context // FLASH_PAGE_TOKENS)
    Hkv, D = cfg.num_key_value_heads, cfg.head_dim
    k_cache = torch.randn(batch * pages, FLASH_PAGE_TOKENS, Hkv, D, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * pages, device=device).view(batch, pages).to(torch.int32)
    lens = torch.full((batch,), context - 1, dtype=torch.int32, device=device)  # then the new token at context - 1
    k, v = new_kv[:, None, 0].contiguous(), new_kv[:, None, 1].contiguous()  # (batch, 1, Hkv, D)
    calls["flash_attn_with_kvcache"] = (lambda: flash(q[:, None], k_cache, v_cache, k=k, v=v, cache_seqlens=lens,
                                                      block_table=table)[:, 0], None)
    return calls


def compiled_decode(plan: Plan, copy_bw: float, prof) -> dict:
    """Decode steps of plan.layers_model eager and compiled at each (context, batch) of the plan."""
    import gc

    import torch

    from fathom.build.sources import resolve_model
    from fathom.runtime.loader import load_model
    from fathom.runtime.model import param_bytes

    source = resolve_model(plan.layers_model)
    model = load_model(source, plan.dtype, plan.device, max_seq_len=DEFAULT_MAX_SEQ_LEN)
    emb = model.transformer.vocab_embedding.weight
    weight_bytes = param_bytes(model) - emb.numel() * emb.element_size()
    out = {"model": plan.layers_model, "cases": []}
    for compile in (False, True):
        ex = open_executor(model, plan, max(plan.compiled_batches), compile=compile)
        for context in plan.compiled_contexts:
            for batch in plan.compiled_batches:
                name = "compiled" if compile else "eager"
                with prof.window(f"{name}_decode_b{batch}_ctx{context}") as w:
                    case = decode_case(ex, plan, batch, context, weight_bytes, copy_bw)
                out["cases"].append({"compiled": compile, **case, "nvml": w.measurement.to_dict()})
        out["compiled_executor" if compile else "eager_executor"] = ex.describe()
        del ex
        gc.collect()
    ran = [c for c in out["cases"] if "skipped" not in c]
    eager = {(c["batch"], c["context"]): c["tok_s"] for c in ran if not c["compiled"]}
    out["speedup"] = [{"batch": c["batch"], "context": c["context"],
                       "compiled_over_eager_tok_s": c["tok_s"] / eager[c["batch"], c["context"]]}
                      for c in ran if c["compiled"] and (c["batch"], c["context"]) in eager]
    del model
    gc.collect()
    if plan.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out
