"""Sampling: small pure functions over logits with an explicit torch.Generator.

temperature 0 means argmax (greedy). top_k 0 and top_p 1.0 disable those filters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fathom.build.errors import FathomError


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks force exact output lengths
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise FathomError(f"max_new_tokens = {self.max_new_tokens}, expected >= 1")
        if self.temperature < 0:
            raise FathomError(f"temperature = {self.temperature}, expected >= 0")
        if not 0 < self.top_p <= 1:
            raise FathomError(f"top_p = {self.top_p}, expected a number in (0, 1]")
        if self.top_k < 0:
            raise FathomError(f"top_k = {self.top_k}, expected >= 0 (0 disables)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) -> (B, V) with everything below the k-th largest set to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, V) -> (B, V) keeping the smallest set of tokens whose probability mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum - sorted_logits.softmax(dim=-1) >= p  # mass before this token already reached p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) float32 -> next token ids (B,)."""
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = filter_top_p(filter_top_k(logits / params.temperature, params.top_k), params.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
