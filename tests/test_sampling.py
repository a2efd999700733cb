import pytest
import torch

from fathom.build.errors import FathomError
from fathom.runtime.sampling import SamplingParams, filter_top_k, filter_top_p, make_generator, sample


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
