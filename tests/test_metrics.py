import random

import numpy as np
import pytest

from fathom.runtime.metrics import (RequestTiming, compute_metrics, e2e_latency_s, itls_s, meets_slo, percentile,
                                    stats_ms, tpot_s, ttft_s)


def timing(start, *times, **kw) -> RequestTiming:
    return RequestTiming("r", start, list(times), **kw)


def test_ttft_tpot_itl_and_latency_from_token_timestamps():
    t = timing(10.0, 10.1, 10.15, 10.2, 10.3)
    assert ttft_s(t) == pytest.approx(0.1)
    assert e2e_latency_s(t) == pytest.approx(0.3)
    assert tpot_s(t) == pytest.approx((0.3 - 0.1) / 3)
    assert itls_s(t) == pytest.approx([0.05, 0.05, 0.1])


def test_tpot_uses_the_reported_token_count_when_chunks_bundle_tokens():
    t = timing(0.0, 0.1, 0.2, 0.5, output_tokens=5, end_s=0.6)
    assert e2e_latency_s(t) == pytest.approx(0.6)  # response end, not the last chunk
    assert tpot_s(t) == pytest.approx((0.6 - 0.1) / 4)


def test_tpot_is_undefined_for_a_single_token():
    assert tpot_s(timing(0.0, 0.2)) is None


def test_percentile_interpolates_linearly_between_closest_ranks():
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([1, 2, 3, 4], 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_percentile_matches_numpy_default_method():
    rng = random.Random(3)
    xs = [rng.expovariate(1.0) for _ in range(101)]
    for p in (0, 10, 50, 90, 99, 100):
        assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))


def test_stats_are_in_milliseconds():
    s = stats_ms([0.001, 0.002, 0.003])
    assert s == pytest.approx({"mean": 2.0, "median": 2.0, "p90": 2.8, "p99": 2.98})
    assert stats_ms([]) == {"mean": None, "median": None, "p90": None, "p99": None}


def test_compute_metrics_aggregates_successful_requests_only():
    ok1 = timing(0.0, 0.1, 0.2, 0.3, prompt_tokens=8)  # TTFT 100 ms, TPOT 100 ms
    ok2 = timing(0.5, 0.9, 1.0, 1.1, prompt_tokens=8)  # TTFT 400 ms, TPOT 100 ms
    failed = RequestTiming("x", 0.0, [], error="HTTP 500")
    m = compute_metrics([ok1, ok2, failed], duration_s=2.0, energy_j=12.0)
    assert (m.completed, m.failed) == (2, 1)
    assert (m.total_input_tokens, m.total_output_tokens) == (16, 6)
    assert m.request_throughput_per_s == pytest.approx(1.0)
    assert m.output_throughput_tok_per_s == pytest.approx(3.0)
    assert m.total_throughput_tok_per_s == pytest.approx(11.0)
    assert m.mean_ttft_ms == pytest.approx(250.0) and m.median_ttft_ms == pytest.approx(250.0)
    assert m.p99_ttft_ms == pytest.approx(100 + 300 * 0.99)
    assert m.mean_tpot_ms == pytest.approx(100.0)
    assert m.mean_e2el_ms == pytest.approx(450.0)
    assert m.energy_per_output_token_j == pytest.approx(2.0)
    assert m.request_goodput_per_s is None  # no SLO given


def test_unknown_values_stay_null():
    m = compute_metrics([timing(0.0, 0.1, 0.2)], duration_s=1.0)
    assert m.total_input_tokens is None and m.total_throughput_tok_per_s is None
    assert m.energy_j is None and m.energy_per_output_token_j is None
    assert m.peak_gpu_mem_used_bytes is None


def test_goodput_counts_requests_meeting_every_slo():
    fast = timing(0.0, 0.05, 0.06, 0.07)  # TTFT 50 ms, TPOT 10 ms
    slow_first = timing(0.0, 0.5, 0.51, 0.52)  # TTFT 500 ms
    slow_decode = timing(0.0, 0.05, 0.15, 0.25)  # TPOT 100 ms
    one_token = timing(0.0, 0.05)  # TPOT counts as 0 for the SLO
    reqs = [fast, slow_first, slow_decode, one_token]
    assert compute_metrics(reqs, 2.0, slo_ttft_ms=100).request_goodput_per_s == pytest.approx(1.5)
    assert compute_metrics(reqs, 2.0, slo_tpot_ms=20).request_goodput_per_s == pytest.approx(1.5)
    assert compute_metrics(reqs, 2.0, slo_ttft_ms=100, slo_tpot_ms=20).request_goodput_per_s == pytest.approx(1.0)
    assert meets_slo(one_token, None, 1.0)


def test_duration_must_be_positive():
    with pytest.raises(ValueError):
        compute_metrics([], duration_s=0)
