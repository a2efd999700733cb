"""The embedded demo model: HF format, R1 tokenizer and chat template, and it really answers."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from fathom.build.config import ModelConfig, preset
from fathom.build.manifest import sha256_file
from fathom.build.sources import DEMO_DIR, resolve_model
from fathom.runtime import arith

REPO = Path(__file__).resolve().parents[1]
SPECIALS = {"<｜▁pad▁｜>": "pad", "<｜begin▁of▁sentence｜>": "bos", "<｜end▁of▁sentence｜>": "eos",
            "<｜User｜>": None, "<｜Assistant｜>": None, "<think>": None, "</think>": None}


def load_training_script():
    spec = importlib.util.spec_from_file_location("train_demo_model", REPO / "scripts" / "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tok(monkeypatch_module):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def demo_executor():
    from fathom.runtime.loader import load_model
    from fathom.runtime.reference import ReferenceExecutor

    return ReferenceExecutor(load_model(resolve_model("demo"), "float32", "cpu", 16384))


def chat_prompt(tok, problem):
    return tok.apply_chat_template([{"role": "user", "content": problem.user_message}],
                                   add_generation_prompt=True, tokenize=False)


def greedy_outputs(executor, tok, problems, max_new_tokens=96):
    from fathom.runtime.executor import Request, stream
    from fathom.runtime.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens)
    requests = [Request(str(i), tok.encode(chat_prompt(tok, p), add_special_tokens=False), params)
                for i, p in enumerate(problems)]
    out = {r.request_id: [] for r in requests}
    for event in stream(executor, requests):
        if event.token_id is not None:
            out[event.request_id].append(event.token_id)
    return [out[str(i)] for i in range(len(problems))]


def test_shipped_config_equals_the_demo_preset_and_is_small():
    cfg = ModelConfig.from_hf_dir(DEMO_DIR)
    assert cfg == preset("demo")
    raw = json.loads((DEMO_DIR / "config.json").read_text())
    assert raw["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA, like Fathom
    assert cfg.max_position_embeddings >= 16384 and cfg.rope_theta == 1e6
    total_bytes = sum(f.stat().st_size for f in DEMO_DIR.iterdir() if f.is_file())
    assert total_bytes <= 6 * 1024 * 1024


def test_training_record_describes_the_shipped_weights():
    record = json.loads((DEMO_DIR / "TRAINING.json").read_text())
    script = load_training_script()
    assert record["model_safetensors_sha256"] == sha256_file(DEMO_DIR / "model.safetensors")
    assert record["num_params"] == preset("demo").num_params()
    assert record["eval"]["heldout_problems"] >= 200


def test_tokenizer_loads_offline_and_round_trips_text(tok):
    for text in ["What is 457 + 68?", "  spaces\tand\nnewlines\n\n", "héllo wörld ✓ 数学", arith.PROMPT_SUFFIX,
                 arith.worked_solution(arith.make_problem("-", 905, 78))]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok) <= preset("demo").vocab_size


def test_special_tokens_are_single_tokens_with_the_config_ids(tok):
    cfg = preset("demo")
    for text, role in SPECIALS.items():
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, text
        if role:
            assert getattr(tok, f"{role}_token") == text
            assert getattr(tok, f"{role}_token_id") == ids[0]
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)
    assert all(len(tok.encode(d, add_special_tokens=False)) == 1 for d in "0123456789")
    assert len(tok.encode("x 1234 y", add_special_tokens=False)) >= 4  # digits never merge


def test_chat_template_opens_the_think_block(tok):
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>What is 1 + 2?<｜Assistant｜><think>\n"
    assert not tok.apply_chat_template(messages, tokenize=False).endswith("<think>\n")


def test_chat_template_puts_system_first_and_drops_earlier_reasoning(tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 1 + 2?"},
                {"role": "assistant", "content": "1+2: 3\n</think>\n\nThe answer is \\boxed{3}."},
                {"role": "user", "content": "And 2 + 2?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 1 + 2?"
                    "<｜Assistant｜>\n\nThe answer is \\boxed{3}.<｜end▁of▁sentence｜>"
                    "<｜User｜>And 2 + 2?<｜Assistant｜><think>\n")


def test_demo_model_answers_heldout_problems_through_the_reference_executor(tok, demo_executor):
    problems = arith.make_problems(8, 99, "heldout")
    outputs = greedy_outputs(demo_executor, tok, problems)
    for ids, problem in zip(outputs, problems):
        assert ids[-1] == tok.eos_token_id
        text = tok.decode(ids, skip_special_tokens=False)
        assert "</think>" in text
        assert arith.is_correct(text, problem), (problem.question, text)


def test_transformers_loads_the_demo_dir_and_agrees_with_fathom(tok, demo_executor):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(DEMO_DIR), local_files_only=True).eval()
    problems = arith.make_problems(2, 5, "heldout")
    ours = greedy_outputs(demo_executor, tok, problems)
    for ids, problem in zip(ours, problems):
        prompt = torch.tensor([tok.encode(chat_prompt(tok, problem), add_special_tokens=False)])
        with torch.no_grad():
            theirs = model.generate(prompt, max_new_tokens=96, do_sample=False, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
        assert theirs[0, prompt.shape[1]:].tolist() == ids


def test_training_is_deterministic_for_a_seed():
    from transformers import AutoTokenizer

    script = load_training_script()
    tok = AutoTokenizer.from_pretrained(str(DEMO_DIR), local_files_only=True)
    tc = script.TrainConfig(seed=3, steps=3, batch_size=4, warmup_steps=1, threads=1)
    batches = script.make_batches(tok, arith.make_problems(12, 3, "train"), tc.batch_size)

    first, second = (script.train(preset("demo"), batches, tc, log_every=0) for _ in range(2))
    assert first.losses == second.losses and first.losses[-1] < first.losses[0]
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(script.hf_model(preset("demo"), seed=4).lm_head.weight,
                           script.hf_model(preset("demo"), seed=3).lm_head.weight)


def test_tokenizer_is_rebuilt_exactly_by_the_training_script():
    script = load_training_script()
    tc = script.TrainConfig()
    from tokenizers import Tokenizer

    rebuilt = script.build_tokenizer(preset("demo").vocab_size, tc.seed, tc.tokenizer_problems)
    shipped = Tokenizer.from_file(str(DEMO_DIR / "tokenizer.json"))
    assert rebuilt.get_vocab() == shipped.get_vocab()
    text = arith.make_problem("+", 804, 99).user_message + " Unseen words, too: quantization!"
    assert rebuilt.encode(text).ids == shipped.encode(text).ids  # same merges
