"""Train the embedded demo model (build/demo_model/) from scratch, deterministically, on a CPU.

    python scripts/train_demo_model.py            # ~7 min on an idle 2-core machine (0.32 s/step)
    python scripts/train_demo_model.py --steps 20 --out /tmp/demo --eval-problems 16   # smoke run

What it makes: a tiny Qwen2ForCausalLM (shape = MODEL_PRESETS["demo"] in build/config.py) with a
byte-level BPE tokenizer that carries the DeepSeek-R1 special tokens and chat template, trained
on `fathom.runtime.arith` problems (3-digit addition and subtraction with a worked `<think>`
trace and a `\\boxed{}` answer). Loss is on the completion only. Then it measures held-out greedy
accuracy with fathom's own loader and reference executor and records the run in
profiles/results/demo_model_training.json.

Determinism: fixed seeds, fixed data order, 2 threads, torch deterministic algorithms; the same
machine and library versions reproduce the same model.safetensors bytes (its sha256 is recorded).
Other processes on the same two cores slow it down a lot (each 2-thread OpenMP op waits for a
descheduled thread), never change the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fathom.build.atomic import atomic_output_dir
from fathom.build.config import DEFAULT_MAX_SEQ_LEN, ModelConfig, preset
from fathom.build.manifest import sha256_file
from fathom.build.sources import DEMO_DIR
from fathom.runtime import arith

REPO = Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "profiles" / "results" / "demo_model_training.json"

# The exact DeepSeek-R1-Distill-Qwen strings (docs/REFERENCE.md, Tokenizer and chat template);
# the pad token is DeepSeek-V3's.
PAD, BOS, EOS = "<｜▁pad▁｜>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT, THINK, END_THINK = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, THINK, END_THINK]  # ids 0..6 in this order
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2.5-*): words with their leading space,
# single digits, punctuation runs, newlines; then byte-level BPE.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# DeepSeek-R1-Distill-Qwen's template (tokenizer_config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-*)
# without the tool-call branches: bos, system text, `<｜User｜>` turns, earlier assistant turns with
# the reasoning cut at `</think>` and closed by eos, and a generation prompt that opens `<think>\n`.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tokenizer_problems: int = 4000
    eval_problems: int = 1000
    eval_seed: int = 1234
    threads: int = 2


# ---- tokenizer ------------------------------------------------------------------------------
def build_tokenizer(vocab_size: int, seed: int, n_problems: int):
    """Byte-level BPE with Qwen2's pre-tokenizer, trained on chat-formatted demo problems. The
    special tokens take ids 0..6; the corpus runs out of merges at ~330 tokens, and the model's
    vocab_size pads the embedding past that (as Qwen pads 151,646 tokens to 152,064 rows)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [p.user_message + "\n" + arith.worked_solution(p)
              for p in arith.make_problems(n_problems, seed, "train")]
    tok.train_from_iterator(corpus, trainer)
    if tok.get_vocab_size() > vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, more than the preset's vocab_size {vocab_size}")
    return tok


def tokenizer_config(max_len: int) -> dict:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tok, out: Path, max_len: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(max_len), indent=2, ensure_ascii=False) + "\n")


# ---- data -----------------------------------------------------------------------------------
def prompt_ids(hf_tok, problem: arith.Problem) -> list[int]:
    messages = [{"role": "user", "content": problem.user_message}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def encode_example(hf_tok, problem: arith.Problem) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are -100 on the prompt, the completion + eos is learned."""
    prompt = prompt_ids(hf_tok, problem)
    completion = hf_tok.encode(arith.worked_solution(problem), add_special_tokens=False) + [hf_tok.eos_token_id]
    return prompt + completion, [-100] * len(prompt) + completion


def make_batches(hf_tok, problems: list[arith.Problem], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, labels) batches in a fixed order. Right padding needs no attention mask:
    a causal model never lets a real token see the padding after it."""
    batches = []
    for start in range(0, len(problems) - batch_size + 1, batch_size):
        rows = [encode_example(hf_tok, p) for p in problems[start:start + batch_size]]
        T = max(len(ids) for ids, _ in rows)
        ids = torch.full((batch_size, T), hf_tok.pad_token_id)  # (B, T)
        labels = torch.full((batch_size, T), -100)  # (B, T)
        for r, (x, y) in enumerate(rows):
            ids[r, :len(x)] = torch.tensor(x)
            labels[r, :len(y)] = torch.tensor(y)
        batches.append((ids, labels))
    return batches


# ---- model and training ---------------------------------------------------------------------
def hf_model(cfg: ModelConfig, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d = cfg.to_hf_dict()
    d["pad_token_id"] = SPECIAL_TOKENS.index(PAD)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**d, attn_implementation="sdpa")).float()


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    model: torch.nn.Module
    losses: list[float]  # per step
    elapsed_s: list[float]  # seconds since the first step began, after each step


def train(cfg: ModelConfig, batches, tc: TrainConfig, log_every: int = 50) -> TrainResult:
    """AdamW over `batches` in order; torch's thread count and determinism flag are restored after."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(tc.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, batches, tc, log_every)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _train(cfg: ModelConfig, batches, tc: TrainConfig, log_every: int) -> TrainResult:
    model = hf_model(cfg, tc.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.98))
    losses, elapsed_s = [], []
    t0 = time.perf_counter()
    for step, (ids, labels) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        losses.append(loss.item())
        elapsed_s.append(time.perf_counter() - t0)
        if log_every and (step % log_every == 0 or step == len(batches) - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step, tc):.2e}  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    return TrainResult(model.eval(), losses, elapsed_s)


def save_model(model, out: Path) -> None:
    from safetensors.torch import save_file

    tensors = {n: t.detach().contiguous() for n, t in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # save_file creates it 0600


def write_config(cfg: ModelConfig, out: Path) -> None:
    d = cfg.to_hf_dict()
    d["pad_token_id"] = SPECIAL_TOKENS.index(PAD)
    (out / "config.json").write_text(json.dumps(d, indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
           "pad_token_id": d["pad_token_id"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# ---- evaluation with fathom's own executor --------------------------------------------------
def heldout_accuracy(model_dir: Path, n: int, seed: int, max_new_tokens: int = 96, batch_size: int = 250) -> dict:
    """Greedy accuracy on n held-out problems: fathom loader + reference executor, static batches."""
    from fathom.build.sources import resolve_model
    from fathom.runtime.chat import load_tokenizer
    from fathom.runtime.loader import load_model
    from fathom.runtime.reference import ReferenceExecutor
    from fathom.runtime.task_eval import answer_problems

    source = resolve_model(str(model_dir))  # an HF dir, loaded exactly as `resolve_model("demo")` loads the shipped one
    executor = ReferenceExecutor(load_model(source, "float32", "cpu", DEFAULT_MAX_SEQ_LEN))
    problems = arith.make_problems(n, seed, "heldout")
    result = answer_problems(executor, load_tokenizer(model_dir), problems, max_new_tokens, batch_size)
    failures = [{"question": p.question, "answer": p.answer, "output": c.text}
                for c, p, ok in zip(result.completions, problems, result.correct) if not ok]
    return {"heldout_problems": n, "heldout_correct": sum(result.correct),
            "heldout_accuracy": result.accuracy if n else None,
            "eval_seed": seed, "eval_wall_s": round(result.wall_s, 2),
            "generated_tokens": result.output_tokens,
            "executor": executor.describe(), "failures": failures[:10]}


# ---- records --------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tokenizers
    import transformers
    return {"platform": platform.platform(), "cpu_model": cpu, "nproc": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _repo_relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def write_readme(out: Path, cfg: ModelConfig, tc: TrainConfig, record: dict) -> None:
    acc = record["eval"]
    text = f"""# fathom demo model

A tiny Qwen2ForCausalLM ({record['num_params']:,} parameters, float32, untied lm_head) that
answers `fathom.runtime.arith` problems (addition and subtraction of numbers with up to three
digits) in the DeepSeek-R1 format: it reasons inside `<think>...</think>` with a digit-by-digit
trace and puts the answer in `\\boxed{{}}`.

- Made by `python scripts/train_demo_model.py` (seed {tc.seed}, {tc.steps} AdamW steps of
  {tc.batch_size} problems, loss on the completion only); recipe in TRAINING.json.
- Shape: MODEL_PRESETS["demo"] in build/config.py: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers,
  {cfg.num_attention_heads} query / {cfg.num_key_value_heads} KV heads, intermediate {cfg.intermediate_size},
  rope_theta {cfg.rope_theta:g}, max_position_embeddings {cfg.max_position_embeddings}.
- Tokenizer: byte-level BPE with Qwen2's pre-tokenizer (digits are single tokens), {record['tokenizer_tokens']}
  tokens (embedding padded to {cfg.vocab_size} rows); special tokens and chat template are
  DeepSeek-R1-Distill-Qwen's (the generation prompt ends with `<｜Assistant｜><think>\\n`).
- Held-out greedy accuracy (fathom reference executor, float32, CPU): {acc['heldout_correct']}/{acc['heldout_problems']}
  = {acc['heldout_accuracy']:.1%}.

Prompt: `What is 457 + 68? {arith.PROMPT_SUFFIX}`
"""
    (out / "README.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--eval-problems", type=int, default=TrainConfig.eval_problems)
    ap.add_argument("--results", type=Path, default=RESULTS_JSON, help="run record JSON ('-' to skip)")
    args = ap.parse_args()
    tc = TrainConfig(seed=args.seed, steps=args.steps, eval_problems=args.eval_problems)
    cfg = preset("demo")
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    torch.set_num_threads(tc.threads)

    from transformers import AutoTokenizer

    with atomic_output_dir(args.out, force=True) as tmp:
        tok = build_tokenizer(cfg.vocab_size, tc.seed, tc.tokenizer_problems)
        save_tokenizer(tok, tmp, cfg.max_position_embeddings)
        hf_tok = AutoTokenizer.from_pretrained(str(tmp))
        assert [hf_tok.bos_token_id, hf_tok.eos_token_id] == [cfg.bos_token_id, cfg.eos_token_id]
        problems = arith.make_problems(tc.steps * tc.batch_size, tc.seed, "train", distinct=False)
        batches = make_batches(hf_tok, problems, tc.batch_size)
        t_train = time.perf_counter()
        result = train(cfg, batches, tc)
        model, losses = result.model, result.losses
        train_wall_s = time.perf_counter() - t_train
        save_model(model, tmp)
        write_config(cfg, tmp)
        acc = heldout_accuracy(tmp, tc.eval_problems, tc.eval_seed)
        record = {
            "train_config": asdict(tc),
            "model_preset": "demo",
            "num_params": sum(p.numel() for p in model.parameters()),
            "tokenizer_tokens": tok.get_vocab_size(),
            "final_loss": losses[-1],
            "model_safetensors_sha256": sha256_file(tmp / "model.safetensors"),
            "eval": {k: v for k, v in acc.items() if k not in ("failures", "eval_wall_s")},
        }
        (tmp / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
        write_readme(tmp, cfg, tc, record)
    total_wall_s = time.perf_counter() - t_start
    print(f"held-out accuracy {acc['heldout_correct']}/{acc['heldout_problems']} = {acc['heldout_accuracy']:.3f}; "
          f"train {train_wall_s:.0f}s, total {total_wall_s:.0f}s")
    if str(args.results) != "-":
        # Load averages show how much other work shared the CPU (the budget is for an idle machine).
        run = {"machine": machine_info(), "load_avg_1m_start": load_start[0], "load_avg_1m_end": os.getloadavg()[0],
               "steps": tc.steps, "train_wall_s": round(train_wall_s, 1),
               "total_wall_s": round(total_wall_s, 1), "s_per_step": round(train_wall_s / tc.steps, 3),
               "out": _repo_relative(args.out), **record, "eval": acc,
               "progress": [{"step": i, "loss": round(losses[i], 5), "elapsed_s": round(result.elapsed_s[i], 1)}
                            for i in range(0, tc.steps, max(1, tc.steps // 40))]}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(run, indent=2) + "\n")


if __name__ == "__main__":
    main()
