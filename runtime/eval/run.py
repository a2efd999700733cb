"""`fathom eval`: sample every problem n times, grade each sample, summarize (pass@1, pass@k, cons@n).

Defaults are the model card's protocol (github.com/FractalAIResearchLabs/Fathom-R1, eval/readme.md):
64 samples per problem, temperature 0.6, top_p 0.95, up to 16,384 output tokens.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass

from fathom.build.errors import FathomError
from fathom.runtime.sampling import SamplingParams

from .backends import SampleJob
from .data import Problem
from .graders import get_grader
from .samples import SamplesWriter, graded_row, read_finished, regraded, summarize_rows


@dataclass(frozen=True)
class EvalOptions:
    samples: int = 64
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 16384
    seed: int = 0
    grader: str = "strict"
    data: str | None = None  # the --data spec, kept in the record and in every sample's settings
    # What draws the samples, kept in every sample's settings: {"model", "executor", "dtype", "precision",
    # "kv_cache_format"} in-process, {"model", "endpoint"} for an endpoint (`sample_source`)
    source: dict | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise FathomError(f"--samples {self.samples}: expected >= 1")
        self.sampling()  # checks temperature, top_p, max_new_tokens

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)

    def settings(self) -> dict:
        """What decides each sample's draw; a resumed run must repeat it (see `samples`)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "data": self.data, **(self.source or {})}

    def parameters(self) -> dict:
        """The run record's parameters (the record names the model and executor on its own)."""
        return {k: v for k, v in asdict(self).items() if k != "source"}


def sample_source(model: str, executor_info: dict | None = None, endpoint: str | None = None) -> dict:
    """`EvalOptions.source`: the model spec with the endpoint URL, or with the executor's name, dtype,
    weight precision and KV cache format (from its `describe()`)."""
    if endpoint is not None:
        return {"model": model, "endpoint": endpoint}
    info = executor_info or {}
    return {"model": model, **{k: info.get(k) for k in ("executor", "dtype", "precision", "kv_cache_format")}}


# How a resume refusal names a setting (default: --key with dashes).
SETTING_NAMES = {"data": "--data", "model": "MODEL", "precision": "the weight precision",
                 "kv_cache_format": "KV cache format"}


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """The seed of one sample: a hash of (--seed, problem, sample), so a resumed or reordered run
    draws each sample exactly as the first run did."""
    digest = hashlib.sha256(f"{seed}|{problem_id}|{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def render_prompt(tokenizer, problem: Problem) -> tuple[str, list[int]]:
    """(text, token ids) of the problem's chat prompt with the generation prompt; every backend
    is sent the token ids."""
    from fathom.runtime.chat import raw_prompt_ids

    if not getattr(tokenizer, "chat_template", None):
        raise FathomError("tokenizer has no chat_template; eval prompts are chat prompts (pass --tokenizer DIR)")
    text = tokenizer.apply_chat_template(problem.messages(), tokenize=False, add_generation_prompt=True)
    return text, raw_prompt_ids(tokenizer, text)


def _resumed_rows(writer: SamplesWriter, out: str | None, resume: bool, problems: list[Problem],
                  options: EvalOptions, grader) -> list[dict]:
    """The finished samples of `out` this run keeps, graded again with `grader` (the file is
    rewritten when a grade changes). Refuses a file drawn with other settings or other data."""
    if not resume:
        return []
    if out is None:
        raise FathomError("--resume: continues an --out file; give --out FILE")
    rows = read_finished(out)
    settings = options.settings()
    for r in rows:
        drawn = r["settings"] if isinstance(r["settings"], dict) else {}
        for key in [*settings, *(k for k in drawn if k not in settings)]:
            theirs, value = drawn.get(key), settings.get(key)
            if theirs != value:
                flag = SETTING_NAMES.get(key, "--" + key.replace("_", "-"))
                raise FathomError(f"--resume {out}: its samples were drawn with {flag} {theirs!r}, this run asks "
                                  f"{value!r}; repeat the first run's settings or write a new --out")
    wanted = {(p.id, k) for p in problems for k in range(options.samples)}
    gold = {p.id: p.answer for p in problems}
    for r in rows:
        if (str(r["problem_id"]), r["sample"]) in wanted and str(r["answer"]) != gold[str(r["problem_id"])]:
            raise FathomError(f"--resume {out}: problem {r['problem_id']} has gold answer {r['answer']!r} "
                              f"there, {gold[str(r['problem_id'])]!r} in --data; not the same data set")
    graded = [regraded(r, grader) for r in rows]
    if any(g["correct"] != r.get("correct") or g["extracted"] != r.get("extracted") for g, r in zip(graded, rows)):
        writer.rewrite(graded)
    return [r for r in graded if (str(r["problem_id"]), r["sample"]) in wanted]


def run_eval(backend, tokenizer, problems: list[Problem], options: EvalOptions, out: str | None = None,
             resume: bool = False, progress: bool = False, force: bool = False) -> dict:
    """Sample, grade and summarize. Every sample is appended to `out` as it finishes; with
    `resume`, samples already in `out` are kept (graded again) and not drawn again; a non-empty
    `out` is refused unless `resume` or `force`. Returns {"parameters", "metrics", "out"};
    metrics are `samples.summarize_rows`'s."""
    if resume and out is None:
        raise FathomError("--resume: continues an --out file; give --out FILE")
    grader = get_grader(options.grader)
    writer = SamplesWriter(out, resume, force)
    rows = _resumed_rows(writer, out, resume, problems, options, grader)
    done = {(str(r["problem_id"]), r["sample"]) for r in rows}
    jobs = []
    for p in problems:
        missing = [k for k in range(options.samples) if (p.id, k) not in done]
        if missing:
            _, ids = render_prompt(tokenizer, p)
            jobs += [SampleJob(p, k, ids, sample_seed(options.seed, p.id, k)) for k in missing]
    from tqdm import tqdm

    settings = options.settings()
    correct = sum(bool(r["correct"]) for r in rows)
    bar = tqdm(total=len(problems) * options.samples, initial=len(rows), file=sys.stderr, disable=not progress,
               unit="sample", dynamic_ncols=True)
    try:
        for result in backend.generate(jobs, options.sampling()):
            job = result.job
            truncated = None if result.finish_reason is None else result.finish_reason == "length"
            row = graded_row(job.problem.id, job.sample, job.problem.problem, job.problem.answer, result.completion,
                             result.output_tokens, truncated, grader, settings)
            writer.write(row)
            rows.append(row)
            correct += row["correct"]
            bar.update(1)
            bar.set_postfix_str(f"acc {correct / len(rows):.1%}")
    finally:
        bar.close()
    order = {p.id: i for i, p in enumerate(problems)}
    rows.sort(key=lambda r: (order[str(r["problem_id"])], r["sample"]))
    return {"parameters": {**options.parameters(), "problems": len(problems), "resumed_samples": len(done)},
            "metrics": summarize_rows(rows, grader), "out": out}


def eval_record(result: dict, model: dict, executor_info: dict) -> dict:
    """The shared run-record envelope (fathom.runtime.records) with kind "eval"."""
    from fathom.runtime.records import environment, make_record

    metrics = {k: v for k, v in result["metrics"].items() if k != "per_problem"}
    return make_record("eval", model, result["parameters"], metrics, environment(executor_info))
