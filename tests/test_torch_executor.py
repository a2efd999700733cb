"""The torch executor (continuous batching, paged KV, chunked prefill) against the unbatched reference."""

import random

import pytest
import torch

from fathom.build.errors import FathomError
from fathom.build.quant.calibrate import calibrate_kv_scales
from fathom.build.sources import resolve_model
from fathom.runtime.executor import Request, collect
from fathom.runtime.executors import create_executor
from fathom.runtime.loader import load_model
from fathom.runtime.reference import ReferenceExecutor
from fathom.runtime.sampling import SamplingParams
from fathom.runtime.torch_executor import TorchExecutor, executor_config
from logits_recorder import record_logits


@pytest.fixture(scope="module")
def models():
    return {name: load_model(resolve_model(f"random:{name}"), "float32", "cpu", max_seq_len=256)
            for name in ("tiny", "tiny-gqa5")}


def prompts_for(model, lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(model.cfg.vocab_size) for _ in range(n)] for n in lengths]


def tokens(events):
    return {rid: [e.token_id for e in evs] for rid, evs in events.items()}


def reference_alone(model, prompts, params, eos_ids=(), logits=None):
    """Each prompt through the reference executor on its own: no padding, no batching.
    Token ids per request; `logits` (a dict) also receives the logits behind them."""
    out = {}
    for i, p in enumerate(prompts):
        ex = ReferenceExecutor(model, eos_ids=list(eos_ids))
        seen = record_logits(ex)
        out.update(tokens(collect(ex, [Request(str(i), p, params)])))
        if logits is not None:
            logits.update(seen)
    return out


def assert_close_logits(got: dict[str, list], want: dict[str, list], tol=1e-4):
    """Token equality can hide a corrupted K/V; the logits behind every token cannot."""
    assert got.keys() == want.keys()
    for rid in want:
        assert len(got[rid]) == len(want[rid])
        assert max((a - b).abs().max().item() for a, b in zip(got[rid], want[rid])) < tol, rid


def check_against_reference(model, prompts, params, ex, drive=None):
    """ex's tokens equal the unbatched reference's, and so (within 1e-4) do the logits behind them.
    `drive(ex)` runs the requests (default: all submitted at once) and returns tokens per request."""
    want_logits: dict[str, list] = {}
    want = reference_alone(model, prompts, params, logits=want_logits)
    got_logits = record_logits(ex)
    got = drive(ex) if drive else tokens(collect(ex, [Request(str(i), p, params) for i, p in enumerate(prompts)]))
    assert got == want
    assert_close_logits(got_logits, want_logits)


def torch_executor(model, eos_ids=(), **options):
    return TorchExecutor(model, eos_ids=list(eos_ids), config=executor_config(**options))


LENGTHS = (5, 17, 33, 1, 64, 9)


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa5"])
@pytest.mark.parametrize("options", [
    dict(max_num_tokens=7, max_num_seqs=4, block_size=5),  # chunks smaller than prompts, odd blocks
    dict(max_num_tokens=512, max_num_seqs=8, block_size=16),  # whole prompts in one step
    dict(max_num_tokens=12, max_num_seqs=3, block_size=3, prefix_reuse=True),
])
def test_batched_paged_chunked_greedy_equals_the_unbatched_reference(models, name, options):
    model = models[name]
    check_against_reference(model, prompts_for(model, LENGTHS), SamplingParams(max_new_tokens=12),
                            torch_executor(model, **options))


def test_requests_joining_mid_run_get_the_reference_tokens(models):
    model = models["tiny"]
    prompts = prompts_for(model, (20, 3, 41, 8), seed=1)
    params = SamplingParams(max_new_tokens=10)

    def staggered(ex):
        got: dict[str, list] = {}
        ex.submit(Request("0", prompts[0], params))
        for step in range(200):
            if step == 3:
                ex.submit(Request("1", prompts[1], params))
            if step == 6:
                ex.submit(Request("2", prompts[2], params))
                ex.submit(Request("3", prompts[3], params))
            for ev in ex.step():
                got.setdefault(ev.request_id, []).append(ev.token_id)
            if step > 6 and not ex.has_pending():
                return got

    check_against_reference(model, prompts, params, torch_executor(model, max_num_tokens=9, max_num_seqs=4, block_size=4),
                            staggered)


def test_prefix_reuse_skips_cached_blocks_and_changes_no_token(models):
    model = models["tiny"]
    base = prompts_for(model, (40,), seed=2)[0]
    prompts = [base + [1, 2, 3], base + [4], base[:35]]
    params = SamplingParams(max_new_tokens=8)

    def first_alone(ex):  # the first request fills the cache, the others hit it
        got = tokens(collect(ex, [Request("0", prompts[0], params)]))
        got.update(tokens(collect(ex, [Request(str(i), p, params) for i, p in enumerate(prompts) if i])))
        return got

    ex = torch_executor(model, max_num_tokens=64, max_num_seqs=4, block_size=8, prefix_reuse=True)
    check_against_reference(model, prompts, params, ex, first_alone)
    assert ex.stats["prefix_hit_tokens"] == 40 + 32  # 5 full blocks of prompt 1, 4 of prompt 2
    off = torch_executor(model, max_num_tokens=64, max_num_seqs=4, block_size=8)
    collect(off, [Request(str(i), p, params) for i, p in enumerate(prompts)])
    assert off.stats["prefix_hit_tokens"] == 0


def test_exhausted_pool_preempts_and_recomputes_without_changing_tokens(models):
    model = models["tiny-gqa5"]
    ex = torch_executor(model, max_num_tokens=16, max_num_seqs=4, block_size=4, num_blocks=20)
    check_against_reference(model, prompts_for(model, (30, 25, 20, 35), seed=3), SamplingParams(max_new_tokens=20), ex)
    assert ex.stats["preemptions"] > 0
    assert ex.cache.allocator.num_free() == ex.cache.allocator.usable_blocks


def test_a_request_that_can_never_fit_is_refused_with_the_numbers(models):
    ex = torch_executor(models["tiny"], block_size=4, num_blocks=5)  # 16 tokens of KV
    with pytest.raises(FathomError, match=r"request big: may need 29 tokens of KV cache, the whole cache holds 16"):
        ex.submit(Request("big", [1] * 10, SamplingParams(max_new_tokens=20)))
    with pytest.raises(FathomError, match="token ids must be in"):
        ex.submit(Request("bad", [1, 999], SamplingParams(max_new_tokens=2)))


def check_cancel_of_one_request(ex, model) -> None:
    """Three requests on `ex`, the second cancelled at step 5: it ends "cancelled" with the reference
    executor's tokens so far, the others as the reference executor alone."""
    prompts = prompts_for(model, (12, 30, 7), seed=4)
    params = SamplingParams(max_new_tokens=15)
    want = reference_alone(model, prompts, params)
    for i, p in enumerate(prompts):
        ex.submit(Request(str(i), p, params))
    events: dict[str, list] = {}
    for step in range(100):
        if step == 5:
            ex.cancel("1")
        for ev in ex.step():
            events.setdefault(ev.request_id, []).append(ev)
        if not ex.has_pending():
            break
    last = events["1"][-1]
    assert last.finish_reason == "cancelled" and last.token_id is None
    got = tokens(events)
    assert got["1"][:-1] == want["1"][:len(got["1"]) - 1]
    assert got["0"] == want["0"] and got["2"] == want["2"]
    assert ex.kv_usage().used_tokens == 0


def test_cancel_ends_one_request_and_frees_its_blocks(models):
    model = models["tiny"]
    ex = torch_executor(model, max_num_tokens=10, max_num_seqs=4, block_size=4)
    check_cancel_of_one_request(ex, model)
    assert ex.cache.allocator.num_free() == ex.cache.allocator.usable_blocks


def test_kv_usage_counts_the_cached_tokens_of_running_requests(models):
    model = models["tiny"]
    ex = torch_executor(model, max_num_tokens=64, max_num_seqs=4, block_size=4, num_blocks=33)
    assert ex.kv_usage().capacity_tokens == 32 * 4
    ex.submit(Request("a", [3] * 10, SamplingParams(max_new_tokens=50)))
    ex.submit(Request("b", [5] * 7, SamplingParams(max_new_tokens=50)))
    generated = 0
    for _ in range(4):
        generated += len([e for e in ex.step() if e.request_id == "a"])
    usage = ex.kv_usage()
    # The last sampled token of each request is not fed yet: its K/V do not exist.
    assert usage.used_tokens == (10 + generated - 1) + (7 + generated - 1)
    assert usage.bytes_per_token == model.cfg.kv_bytes_per_token(4)


def test_sampling_with_a_seed_is_reproducible_across_batches(models):
    model = models["tiny"]
    p = prompts_for(model, (9, 14), seed=5)
    sampled = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    alone = tokens(collect(torch_executor(model), [Request("s", p[0], sampled)]))["s"]
    mixed = tokens(collect(torch_executor(model, max_num_tokens=8, block_size=3),
                           [Request("g", p[1], SamplingParams(max_new_tokens=20)), Request("s", p[0], sampled)]))
    other_seed = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=99)
    other = tokens(collect(torch_executor(model), [Request("s", p[0], other_seed)]))["s"]
    assert mixed["s"] == alone and other != alone
    assert mixed["g"] == reference_alone(model, [p[1]], SamplingParams(max_new_tokens=20))["0"]


def test_eos_and_max_seq_len_end_requests_like_the_reference(models):
    model = models["tiny"]
    prompt = prompts_for(model, (11,), seed=6)[0]
    free = reference_alone(model, [prompt], SamplingParams(max_new_tokens=10))["0"]
    eos = free[4]
    ex = torch_executor(model, eos_ids=[eos])
    ev = collect(ex, [Request("e", prompt, SamplingParams(max_new_tokens=10))])["e"]
    assert [e.token_id for e in ev] == free[:free.index(eos) + 1] and ev[-1].finish_reason == "stop"
    short = TorchExecutor(model, eos_ids=[], max_seq_len=14)
    ref = ReferenceExecutor(model, eos_ids=[], max_seq_len=14)
    got = collect(short, [Request("x", prompt, SamplingParams(max_new_tokens=10))])["x"]
    want = collect(ref, [Request("x", prompt, SamplingParams(max_new_tokens=10))])["x"]
    assert [(e.token_id, e.finish_reason) for e in got] == [(e.token_id, e.finish_reason) for e in want]
    assert got[-1].finish_reason == "length"


def test_a_linear_module_of_its_own_runs_through_its_forward_with_the_same_tokens(models):
    """Linears other than nn.Linear (quantized ones) are called as modules; F.linear serves the rest."""
    class OwnLinear(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.weight, self.calls = linear.weight, 0

        def forward(self, x):
            self.calls += 1
            return torch.nn.functional.linear(x, self.weight)

    model = models["tiny"]
    own = load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=256)
    own.transformer.layers[0].mlp.gate = OwnLinear(own.transformer.layers[0].mlp.gate)
    prompts = prompts_for(model, (13, 6), seed=7)
    params = SamplingParams(max_new_tokens=8)
    requests = [Request(str(i), p, params) for i, p in enumerate(prompts)]
    plain = tokens(collect(torch_executor(model, max_num_tokens=9, block_size=4), requests))
    assert tokens(collect(torch_executor(own, max_num_tokens=9, block_size=4), requests)) == plain
    assert own.transformer.layers[0].mlp.gate.calls > 0


def test_packed_forward_is_bit_identical_to_the_module_forward(models):
    from fathom.runtime.reference import StaticKVCache

    model = models["tiny-gqa5"]
    ids = torch.tensor(prompts_for(model, (19,), seed=8)[0])
    cache = StaticKVCache(model, [0], 19)
    cache.begin(19)
    with torch.inference_mode():
        want = model(ids[None], cache.positions(19), cache)[0]

        class Dense:
            def attend(self, layer, q, kv):  # the static cache for one packed row: q (T, Hq, D), kv (T, 2, Hkv, D)
                return cache.attend(layer, q[None], kv[None])[0]

        cache.begin(19)
        got = model.forward_packed(ids, torch.arange(19), Dense())
    assert torch.equal(got, want)


@pytest.mark.parametrize("kv_format, bound", [("int8", 0.1), ("fp8", 0.25)])
def test_quantized_kv_storage_stays_close_to_the_float_path(models, kv_format, bound):
    model = models["tiny-gqa5"]
    prompts = prompts_for(model, (40, 33, 57), seed=0)

    def first_logits(**kv):
        ex = torch_executor(model, max_num_tokens=9, max_num_seqs=4, **kv)
        seen = record_logits(ex)
        collect(ex, [Request(str(i), p, SamplingParams(max_new_tokens=1)) for i, p in enumerate(prompts)])
        return torch.stack([seen[str(i)][0] for i in range(len(prompts))]), ex

    ref, _ = first_logits()
    got, ex = first_logits(kv_format=kv_format, kv_scales=calibrate_kv_scales(model, prompts, kv_format))
    assert ex.cache.kv.element_size() == 1
    err = (got - ref).abs().max().item()
    assert 1e-5 < err < bound * ref.std().item()  # quantized for real, and close


def test_create_executor_names(models):
    src = resolve_model("random:tiny")
    ex = create_executor("auto", src, max_seq_len=64, block_size=8, max_num_tokens=32, max_num_seqs=2)
    info = ex.describe()
    assert info["executor"] == "torch" and info["device"] == "cpu" and info["block_size"] == 8
    assert info["kv_cache_dtype"] == "float32" and info["cuda_graphs"] is None and info["packed_forward"]
    assert create_executor("reference", src, max_seq_len=64).name == "reference"
    with pytest.raises(FathomError, match="--executor trtllm runs a TensorRT-LLM engine"):
        create_executor("trtllm", src)
    with pytest.raises(FathomError, match="torch executor options"):
        create_executor("torch", src, max_seq_len=64, blocksize=8)


def test_a_quantized_models_kv_format_is_stored_quantized_for_real():
    """A model built with `kv_quant` (a quantized checkpoint's KV format) gets fp8 pools with its
    scales: the same tokens as asking a plain model's executor for them, and as the reference
    executor, whose static cache rounds K/V to the format and keeps float32."""
    from fathom.build.precision import KvCacheFormat
    from fathom.build.quant.kv_cache import KVCacheQuant
    from fathom.runtime.loader import native_tensors_from_hf
    from fathom.runtime.model import Qwen2Model

    src = resolve_model("random:tiny")
    kv_quant = KVCacheQuant(KvCacheFormat.FP8, torch.tensor([0.02, 0.04]))
    model = Qwen2Model.from_tensors(src.config, native_tensors_from_hf(src), torch.float32, "cpu", 128,
                                    kv_quant=kv_quant)
    plain = load_model(src, "float32", "cpu", max_seq_len=128)
    prompts = prompts_for(model, (21, 9), seed=9)
    params = SamplingParams(max_new_tokens=10)
    adopted = torch_executor(model, max_num_tokens=8, block_size=4)
    assert adopted.describe()["kv_cache_dtype"] == "float8_e4m3fn"
    explicit = torch_executor(plain, max_num_tokens=8, block_size=4, kv_format="fp8", kv_scales=(0.02, 0.04))
    requests = [Request(str(i), p, params) for i, p in enumerate(prompts)]
    assert tokens(collect(adopted, requests)) == tokens(collect(explicit, requests))
    check_against_reference(model, prompts, params, torch_executor(model, max_num_tokens=8, block_size=4))
    unquantized = torch_executor(model, max_num_tokens=8, block_size=4, kv_format="model")
    assert unquantized.describe()["kv_cache_dtype"] == "float32"


def test_gpu_check_script_runs_its_whole_code_path_in_smoke_mode(tmp_path):
    import json

    from fathom.profiles import gpu_check

    out = gpu_check.main(["--smoke", "--out", str(tmp_path / "check.json")])
    record = json.loads(out.read_text())
    assert record["smoke"] and record["copy"]["bandwidth_gb_s"] > 0
    for name in ("bf16", "fp8"):
        cases = record[name]["decode"]
        assert [(c["batch"], c["context"]) for c in cases] == [(1, 16), (2, 16), (1, 48), (2, 48)]
        assert all(c["tok_s"] > 0 and c["bytes_read_per_step"] > c["weight_bytes"] for c in cases)
        assert record[name]["prefill"]["prompt_tokens"] == 64
    assert record["fp8"]["executor"]["kv_cache_dtype"] == "float8_e4m3fn"
    assert record["fp8"]["quantization"]["quant_algo"] == "FP8"


def eager_replay_decoder():
    """CudaGraphDecoder whose "graphs" re-run the captured step eagerly (capturing needs CUDA): its
    padding, context buckets and static buffers, testable on the CPU."""
    from fathom.runtime.cuda_graphs import CudaGraphDecoder

    class EagerReplay(CudaGraphDecoder):
        def _capture(self, b, S):
            logits = self._step(b, S)

            class Graph:
                def replay(_):
                    logits.copy_(self._step(b, S))
            return Graph(), logits

    return EagerReplay


def test_cuda_graph_bucketing_pads_with_null_rows_without_changing_logits(models):
    """CudaGraphDecoder's padding, context buckets and static buffers, replayed eagerly on the CPU
    (the capture itself needs CUDA): the same logits as the plain path, step for step."""
    EagerReplay = eager_replay_decoder()
    model = models["tiny-gqa5"]
    prompts = prompts_for(model, (5, 120, 17), seed=10)
    requests = [Request(str(i), p, SamplingParams(max_new_tokens=9)) for i, p in enumerate(prompts)]
    runs = []
    for graphs in (False, True):
        ex = torch_executor(model, max_num_tokens=64, max_num_seqs=3, block_size=8)
        if graphs:
            ex.runner.graphs = EagerReplay(ex.runner.run_model, ex.runner.attn, 3, ex.max_seq_len, ex.device)
        seen = record_logits(ex)
        runs.append((tokens(collect(ex, requests)), seen, ex))
    (plain, plain_logits, _), (graphed, graph_logits, ex) = runs
    assert graphed == plain
    assert_close_logits(graph_logits, plain_logits, tol=1e-5)
    assert (4, 256) in ex.runner.graphs.graphs  # 3 sequences padded to the batch bucket 4, contexts to 256


def test_gate_up_fusion_keeps_the_state_dict_and_one_copy_of_the_weights():
    """The executor fuses each MLP's fc and gate into one (2I, H) tensor after the CPU's column-major
    re-layout: fc.weight and gate.weight become its halves, the state_dict reads as before, and a
    layer whose halves were replaced runs its two matmuls again, with the same tokens."""
    from fathom.runtime.model_weights import fuse_gate_up

    model = load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=256)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = prompts_for(model, (13, 6), seed=3)
    params = SamplingParams(max_new_tokens=6)
    unfused = reference_alone(model, prompts, params)
    torch_executor(model)
    I, mlps = model.cfg.intermediate_size, [layer.mlp for layer in model.transformer.layers]
    fused = [mlp.fused_weight() for mlp in mlps]
    for mlp, w in zip(mlps, fused):
        assert w is not None and w.shape == (2 * I, model.cfg.hidden_size) and w.stride() == (1, 2 * I)
        assert mlp.fc.weight.data_ptr() == w.data_ptr() and mlp.gate.weight.data_ptr() == w[I:].data_ptr()
    got = model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    fuse_gate_up(model)
    assert all(mlp.fused_weight() is w for mlp, w in zip(mlps, fused))
    mlps[0].gate.weight.data = mlps[0].gate.weight.data.clone()
    assert mlps[0].fused_weight() is None
    assert reference_alone(model, prompts, params) == unfused
    requests = [Request(str(i), p, params) for i, p in enumerate(prompts)]
    assert tokens(collect(torch_executor(model), requests)) == unfused
    assert mlps[0].fused_weight().stride() == (1, 2 * I)


def test_consecutive_blocks_are_read_in_place_and_scattered_ones_gathered(models):
    """A lone sequence whose blocks follow each other in the pool is planned for in-place reads (its
    first slot); one whose blocks interleaved with another's is gathered; tokens equal the reference's."""
    model = models["tiny"]
    prompts = prompts_for(model, (9, 9), seed=4)
    short, long = SamplingParams(max_new_tokens=8), SamplingParams(max_new_tokens=16)
    ex = torch_executor(model, max_num_tokens=16, max_num_seqs=2, block_size=4)
    plans = []
    run = ex.runner.run
    ex.runner.run = lambda step, data: plans.append(step) or run(step, data)
    got = tokens(collect(ex, [Request("alone", prompts[0], long)]))
    assert all(p.decode_first_slot == 4 for p in plans if p.num_decodes)  # blocks 1, 2, 3, ...: slots from 4
    assert all(c[4] == 4 for p in plans for c in p.chunks)
    plans.clear()
    got.update(tokens(collect(ex, [Request("a", prompts[0], short), Request("b", prompts[1], long)])))
    # b decodes alone once a is done, over blocks that interleaved with a's
    assert any(p.num_decodes == 1 and p.decode_first_slot == -1 for p in plans)
    want_long = reference_alone(model, prompts, long)
    assert got == {"alone": want_long["0"], "a": want_long["0"][:8], "b": want_long["1"]}


def test_block_manager_tracks_whether_a_sequences_blocks_are_consecutive():
    from fathom.build.config import preset
    from fathom.runtime.block_manager import BlockManager
    from fathom.runtime.paged_kv import PagedKVCache
    from fathom.runtime.scheduler import Sequence

    cache = PagedKVCache(preset("tiny"), 4, 8, torch.float32, torch.device("cpu"), 2, 32)
    blocks = BlockManager(cache, 2, prefix_reuse=False)
    s, t = (Sequence(Request(rid, [1] * 9), [1] * 9, None, order=i) for i, rid in enumerate("st"))
    blocks.admit(s, [])
    blocks.admit(t, [])
    assert blocks.grow(s) and blocks.grow(s) and s.blocks == [1, 2] and s.consecutive
    assert blocks.grow(t) and blocks.grow(s) and s.blocks == [1, 2, 4] and not s.consecutive and t.consecutive
    blocks.release(s)
    assert s.blocks == [] and s.consecutive
