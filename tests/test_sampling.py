import pytest
import torch

from fathom.build.errors import FathomError
from fathom.runtime.sampling import (MAX_LOGPROBS, NO_LOGPROBS, SamplingParams, filter_top_k, filter_top_p,
                                     make_generator, sample, token_logprobs)


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, -1.0, 4.9]])
    assert sample(logits, SamplingParams(temperature=0), None).tolist() == [1, 0]


def test_top_k_keeps_k_largest():
    out = filter_top_k(torch.tensor([[1.0, 4.0, 3.0, 2.0]]), 2)
    assert torch.isinf(out[0, [0, 3]]).all() and out[0, 1] == 4.0 and out[0, 2] == 3.0


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_top_p(probs.log(), 0.8)
    kept = ~torch.isinf(out[0])
    assert kept.tolist() == [True, True, False, False]


def test_top_p_always_keeps_the_top_token():
    out = filter_top_p(torch.tensor([[10.0, 0.0, 0.0]]), 0.01)
    assert (~torch.isinf(out[0])).tolist() == [True, False, False]


def test_seed_reproducibility():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=7)
    a = [sample(logits, params, g).tolist() for g in [make_generator(7)] for _ in range(5)]
    b = [sample(logits, params, g).tolist() for g in [make_generator(7)] for _ in range(5)]
    assert a == b
    c = [sample(logits, params, g).tolist() for g in [make_generator(8)] for _ in range(5)]
    assert a != c


def test_sampling_follows_distribution():
    logits = torch.tensor([[0.0, 1.0]]).log_softmax(-1)  # p = [0.269, 0.731]
    g = make_generator(0)
    draws = torch.stack([sample(logits, SamplingParams(temperature=1.0), g) for _ in range(4000)])
    assert abs(draws.float().mean().item() - 0.731) < 0.03


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-2)])
def test_invalid_params_rejected(kwargs):
    with pytest.raises(FathomError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("value", [-1, MAX_LOGPROBS + 1, 2.5, True, "3"])
def test_logprobs_outside_0_to_20_rejected_naming_the_field(value):
    with pytest.raises(FathomError, match=r"^logprobs = .*, expected None or an integer in \[0, 20\]$"):
        SamplingParams(logprobs=value)


def test_logprobs_in_range_accepted():
    assert [SamplingParams(logprobs=k).logprobs for k in (None, 0, 1, 20)] == [None, 0, 1, 20]


def test_token_logprobs_per_row_only_for_rows_that_ask():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, 0.5, 4.0, 1.0], [2.0, 1.0, 0.0, 3.0]])
    want = logits.log_softmax(dim=-1)
    out = token_logprobs(logits, [2, 0, 3], [1, None, 0])
    assert out[1] == NO_LOGPROBS
    logprob, top = out[0]
    assert logprob == pytest.approx(want[0, 2].item()) and top == ((1, pytest.approx(want[0, 1].item())),)
    assert out[2] == (pytest.approx(want[2, 3].item()), ())
    assert token_logprobs(logits, [0, 0, 0], [None] * 3) == [NO_LOGPROBS] * 3


def test_token_logprobs_top_list_is_sorted_and_capped_at_the_vocabulary():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    logprob, top = token_logprobs(logits, [0], [5])[0]
    assert [t for t, _ in top] == [1, 2, 0] and top[2][1] == logprob
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
