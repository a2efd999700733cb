"""Token log-probs through the executor interface: the raw distribution's, the same in every executor,
computed only for requests that ask and changing no token."""

import random

import pytest
import torch

from fathom.build.sources import resolve_model
from fathom.runtime.executor import Request, collect
from fathom.runtime.loader import load_model
from fathom.runtime.onnx_executor import OnnxExecutor, OnnxSessionModel
from fathom.runtime.reference import ReferenceExecutor, StaticKVCache
from fathom.runtime.sampling import SamplingParams
from fathom.runtime.torch_executor import TorchExecutor, executor_config

TOL = 1e-5
SPEC = "random:tiny-gqa5"
EXECUTORS = ["torch", "reference", "onnx"]


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_model(SPEC), "float32", "cpu", max_seq_len=256)


@pytest.fixture(scope="module")
def onnx_graph(onnx_exports):
    """`model` exported with fathom export onnx, in an onnxruntime session."""
    return OnnxSessionModel(resolve_model(str(onnx_exports(SPEC))), max_seq_len=256)


def prompts_for(model, lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(model.cfg.vocab_size) for _ in range(n)] for n in lengths]


def make_executor(name, model, request=None):
    if name == "reference":
        return ReferenceExecutor(model, eos_ids=[])
    if name == "onnx":  # exported only when a test asks for it
        return OnnxExecutor(request.getfixturevalue("onnx_graph"), eos_ids=[])
    # Chunks smaller than the prompts and odd blocks: prefill spans steps, decodes join mid-prefill.
    return TorchExecutor(model, eos_ids=[], config=executor_config(max_num_tokens=11, max_num_seqs=4, block_size=5))


def raw_logprobs(model, prompt, generated):
    """(len(generated), V): log_softmax of the logits behind each generated token, from one plain
    forward over the whole sequence (no executor, no KV reuse)."""
    ids = torch.tensor(prompt + generated[:-1])
    T = len(ids)
    cache = StaticKVCache(model, [0], T)
    cache.begin(T)
    with torch.inference_mode():
        logits = model(ids[None], cache.positions(T), cache)[0]  # (T, V)
    return logits[len(prompt) - 1:].float().log_softmax(dim=-1)


LENGTHS = (7, 23, 1, 12)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_greedy_logprobs_are_the_log_softmax_of_the_models_logits(model, executor, request):
    prompts = prompts_for(model, LENGTHS)
    params = SamplingParams(max_new_tokens=9, logprobs=5)
    got = collect(make_executor(executor, model, request), [Request(str(i), p, params) for i, p in enumerate(prompts)])
    for i, prompt in enumerate(prompts):
        events = got[str(i)]
        want = raw_logprobs(model, prompt, [e.token_id for e in events])
        for e, row in zip(events, want):
            assert abs(e.logprob - row[e.token_id].item()) < TOL
            ids = [t for t, _ in e.top_logprobs]
            values = [v for _, v in e.top_logprobs]
            assert len(e.top_logprobs) == 5 and values == sorted(values, reverse=True)
            assert ids[0] == e.token_id and values[0] == e.logprob  # greedy: the most likely token
            top_values, top_ids = row.topk(5)
            assert ids == top_ids.tolist()
            assert max(abs(a - b) for a, b in zip(values, top_values.tolist())) < TOL


@pytest.mark.parametrize("executor", EXECUTORS)
def test_sampled_tokens_get_the_raw_logprob_not_the_tempered_one(model, executor, request):
    prompt = prompts_for(model, (10,), seed=1)[0]
    params = SamplingParams(max_new_tokens=12, temperature=0.5, top_k=4, top_p=0.9, seed=3, logprobs=0)
    events = collect(make_executor(executor, model, request), [Request("s", prompt, params)])["s"]
    want = raw_logprobs(model, prompt, [e.token_id for e in events])
    tempered = (want / 0.5).log_softmax(dim=-1)
    for e, row, hot in zip(events, want, tempered):
        assert e.top_logprobs == ()
        assert abs(e.logprob - row[e.token_id].item()) < TOL
        assert abs(e.logprob - hot[e.token_id].item()) > 1e-3


@pytest.mark.parametrize("executor", ["torch", "onnx"])
def test_executors_give_the_reference_executors_logprobs(model, executor, request):
    prompts = prompts_for(model, LENGTHS, seed=2)
    params = SamplingParams(max_new_tokens=10, logprobs=20)
    runs = [collect(make_executor(name, model, request), [Request(str(i), p, params) for i, p in enumerate(prompts)])
            for name in (executor, "reference")]
    fast, ref = runs
    for rid in ref:
        assert [e.token_id for e in fast[rid]] == [e.token_id for e in ref[rid]]
        for a, b in zip(fast[rid], ref[rid]):
            assert abs(a.logprob - b.logprob) < TOL
            assert [t for t, _ in a.top_logprobs] == [t for t, _ in b.top_logprobs]
            assert max(abs(x - y) for (_, x), (_, y) in zip(a.top_logprobs, b.top_logprobs)) < TOL


@pytest.mark.parametrize("executor", EXECUTORS)
def test_asking_for_logprobs_changes_no_token(model, executor, request):
    prompts = prompts_for(model, (5, 17, 9, 30, 3), seed=4)
    kinds = [dict(), dict(temperature=0.8, top_p=0.9, seed=11), dict(), dict(temperature=1.2, top_k=7, seed=5), dict()]
    asks = [3, 0, None, 20, 1]

    def run(with_logprobs):
        requests = [Request(str(i), p, SamplingParams(max_new_tokens=8, logprobs=k if with_logprobs else None, **kind))
                    for i, (p, kind, k) in enumerate(zip(prompts, kinds, asks))]
        return collect(make_executor(executor, model, request), requests)

    plain, mixed = run(False), run(True)
    assert {r: [(e.token_id, e.finish_reason) for e in evs] for r, evs in mixed.items()} == \
           {r: [(e.token_id, e.finish_reason) for e in evs] for r, evs in plain.items()}
    for i, k in enumerate(asks):
        for e in mixed[str(i)]:
            assert (e.logprob is None) == (k is None) and len(e.top_logprobs) == (k or 0)
    assert all(e.logprob is None and e.top_logprobs == () for evs in plain.values() for e in evs)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_no_log_softmax_runs_when_no_request_asks(model, executor, monkeypatch, request):
    def refuse(*args, **kwargs):
        raise AssertionError("log_softmax computed for a batch where no request asked for logprobs")

    ex = make_executor(executor, model, request)  # built before the patch: construction may use anything
    for owner in (torch.Tensor, torch, torch.nn.functional):
        monkeypatch.setattr(owner, "log_softmax", refuse)
    prompts = prompts_for(model, (6, 13))
    got = collect(ex, [Request(str(i), p, SamplingParams(max_new_tokens=4)) for i, p in enumerate(prompts)])
    assert sum(len(evs) for evs in got.values()) == 8
