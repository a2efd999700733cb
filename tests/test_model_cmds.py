"""generate / chat / info on the embedded demo model, through the CLI."""

import json

from click.testing import CliRunner

from fathom.runtime.arith import PROMPT_SUFFIX
from fathom.runtime.cli import main

QUESTION = f"What is 457 + 68? {PROMPT_SUFFIX}"


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_generate_json_splits_reasoning_and_answer():
    r = invoke("generate", "demo", "-p", QUESTION, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert "5+6+1: 2 carry 1" in d["reasoning"]
    assert d["answer"].strip() == "The answer is \\boxed{525}."
    assert d["finish_reason"] == "stop" and d["output_tokens"] == len(d["token_ids"])
    assert "<｜end▁of▁sentence｜>" not in d["text"]
    assert d["executor"]["executor"] == "torch"


def test_generate_streams_the_same_text_as_no_stream():
    streamed = invoke("generate", "demo", "-p", QUESTION)
    plain = invoke("generate", "demo", "-p", QUESTION, "--no-stream", "--executor", "reference")
    assert streamed.exit_code == 0 and plain.exit_code == 0
    for out in (streamed.output, plain.output):
        assert "The answer is \\boxed{525}." in out and "4+0+1: 5 carry 0" in out


def test_generate_max_new_tokens_and_stop_string():
    r = json.loads(invoke("generate", "demo", "-p", QUESTION, "--max-new-tokens", "5", "--json").output)
    assert r["output_tokens"] == 5 and r["finish_reason"] == "length"
    r = json.loads(invoke("generate", "demo", "-p", QUESTION, "--stop", "carry", "--json").output)
    assert r["finish_reason"] == "stop" and "carry" not in r["text"] and r["text"].startswith("457+068")


def test_generate_sampling_is_seeded():
    args = ("generate", "demo", "-p", QUESTION, "--temperature", "1.5", "--top-k", "50", "--json")
    a, b = (json.loads(invoke(*args, "--seed", "1").output)["token_ids"] for _ in range(2))
    assert a == b


def test_generate_profile_records_nulls_without_a_gpu():
    r = CliRunner().invoke(main, ["generate", "demo", "-p", QUESTION, "--profile", "--json"])
    assert r.exit_code == 0
    prof = json.loads(r.stdout[r.stdout.index("{"):])["profile"]
    assert prof["run"]["energy_j"] is None and prof["run"]["max_rss_bytes"] > 0


def test_chat_repl_multi_turn_reset_and_exit():
    r = invoke("chat", "demo", input=f"{QUESTION}\n/reset\nWhat is 12 + 30? {PROMPT_SUFFIX}\n/exit\n")
    assert r.exit_code == 0, r.output
    assert "\\boxed{525}" in r.output and "(history cleared)" in r.output and "\\boxed{42}" in r.output


def test_info_json_for_a_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert invoke("convert", "demo", str(ckpt), "--precision", "fp8").exit_code == 0
    d = json.loads(invoke("info", str(ckpt), "--json").output)
    assert d["kind"] == "checkpoint" and d["quantization"]["quant_algo"] == "FP8"
    assert d["kv_bytes_per_token"]["bfloat16"] == 2 * 4 * 2 * 32 * 2  # K,V x layers x kv heads x head_dim x 2 B
    r = invoke("generate", str(ckpt), "-p", QUESTION, "--json")
    assert json.loads(r.output)["answer"].strip() == "The answer is \\boxed{525}."
