"""FP8 on the embedded demo model: calibration on its own task text, quality with task accuracy."""

import pytest

from fathom.build.convert import ConvertOptions, convert
from fathom.build.quant.calib_data import load_token_set
from fathom.build.quant.calibrate import CalibConfig
from fathom.build.precision import WeightFormat
from fathom.build.quant.pipeline import QuantOptions, prepare_transform
from fathom.build.sources import DEMO_DIR, resolve_model
from fathom.runtime.quality import QualityOptions, run_quality

pytestmark = pytest.mark.skipif(not (DEMO_DIR / "config.json").is_file(), reason="build/demo_model/ not built yet")


def test_builtin_calibration_text_is_chat_formatted_demo_problems():
    from fathom.runtime.chat import load_tokenizer

    tok = load_tokenizer(DEMO_DIR)
    train = load_token_set("builtin", 3, 128, 0, 384, tok, split="train")
    heldout = load_token_set("builtin", 3, 128, 0, 384, tok, split="heldout")
    assert train.source == "builtin:arith-train" and heldout.source == "builtin:arith-heldout"
    for ids in train.sequences:  # one problem per sequence, as the demo model was trained
        text = tok.decode(ids)
        assert 20 < len(ids) <= 128 and text.count("What is") == 1
        assert "<think>" in text and "\\boxed{" in text and ids[-1] == tok.eos_token_id
    assert train.sequences != heldout.sequences


def test_fp8_demo_checkpoint_keeps_top1_and_task_accuracy(tmp_path):
    demo = resolve_model("demo")
    base, fp8 = tmp_path / "base", tmp_path / "fp8"
    convert(demo, base, ConvertOptions(dtype="float32"))
    transform = prepare_transform(demo, fp8, QuantOptions(WeightFormat.FP8, calib=CalibConfig(samples=8, seq_len=128)))
    convert(demo, fp8, ConvertOptions(dtype="float32"), transform=transform)
    options = QualityOptions(sequences=4, seq_len=128, task_problems=6, max_new_tokens=72)
    result = run_quality(str(base), str(fp8), options)
    m = result["metrics"]
    assert result["parameters"]["token_source"] == "builtin:arith-heldout"
    assert m["task_problems"] == 6 and m["task_skipped"] is None
    assert m["task_accuracy_base"] >= 0.75  # the demo model knows its task
    assert m["task_accuracy_candidate"] >= m["task_accuracy_base"] - 0.25
    assert m["top1_agreement"] >= 0.95 and m["completion"]["top1_agreement"] >= 0.95
    assert 0 < m["completion"]["tokens"] < m["tokens"]
