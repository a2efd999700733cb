"""Sampling: small pure functions over logits with an explicit torch.Generator.

temperature 0 means argmax (greedy). top_k 0 and top_p 1.0 disable those filters.
Log-probabilities are those of the model's raw distribution: log_softmax of the float32 logits
before temperature, top-k and top-p, as vLLM's default `--logprobs-mode raw_logprobs`
(docs.vllm.ai, "Engine Arguments").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fathom.build.errors import FathomError

# The most alternatives a request may ask for: OpenAI's `top_logprobs` is "an integer between 0
# and 20" (platform.openai.com API reference, Chat Completions), vLLM's --max-logprobs default.
MAX_LOGPROBS = 20

# A sampled token's log-prob and its most likely alternatives, (token id, log-prob) most likely first.
TokenLogprobs = tuple[float | None, tuple[tuple[int, float], ...]]
NO_LOGPROBS: TokenLogprobs = (None, ())


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
    logprobs: int | None = None  # None: none; 0: the sampled token's; k >= 1: also the k most likely tokens

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise FathomError(f"max_new_tokens = {self.max_new_tokens}, expected >= 1")
        if self.temperature < 0:
            raise FathomError(f"temperature = {self.temperature}, expected >= 0")
        if not 0 < self.top_p <= 1:
            raise FathomError(f"top_p = {self.top_p}, expected a number in (0, 1]")
        if self.top_k < 0:
            raise FathomError(f"top_k = {self.top_k}, expected >= 0 (0 disables)")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise FathomError(f"logprobs = {self.logprobs!r}, expected None or an integer in [0, {MAX_LOGPROBS}]")

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


def token_logprobs(logits: torch.Tensor, token_ids: list[int], counts: list[int | None]) -> list[TokenLogprobs]:
    """Per row of logits (B, V): the raw log-prob of token_ids[row] and the counts[row] most likely
    (token id, log-prob), most likely first; NO_LOGPROBS where counts[row] is None.

    One log_softmax over the rows that ask, none when no row does.
    """
    rows = [i for i, k in enumerate(counts) if k is not None]
    out = [NO_LOGPROBS] * len(counts)
    if not rows:
        return out
    index = torch.tensor(rows, device=logits.device)
    chosen = torch.tensor([token_ids[i] for i in rows], device=logits.device)
    logp = logits.index_select(0, index).float().log_softmax(dim=-1)  # (R, V)
    top_values, top_ids = logp.topk(min(max(counts[i] for i in rows), logp.shape[-1]), dim=-1)
    values = torch.cat([logp.gather(-1, chosen[:, None]), top_values], dim=-1).tolist()  # (R, 1 + k)
    ids = top_ids.tolist()
    for r, i in enumerate(rows):
        k = counts[i]
        out[i] = (values[r][0], tuple(zip(ids[r][:k], values[r][1:1 + k])))
    return out
