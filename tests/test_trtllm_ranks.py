"""TensorRT-LLM ranks through the fake C++ executor: the rank from tensorrt_llm's MPI helpers, the
leader that takes requests and shuts down, followers that serve until then, and the CLI commands on
a follower rank."""

import threading

import pytest
from click.testing import CliRunner

from fathom.build.errors import FathomError
from fathom.build.sources import DEMO_DIR
from fathom.runtime.executor import Request
from fathom.runtime.sampling import SamplingParams
from test_trtllm_executor import H100, engine_dir, fake_trtllm, open_executor, script_tokens, tp2_engine_dir  # noqa: F401 (fixtures)

def play_rank(monkeypatch, rank: int, world: int):
    """This process as one rank of an `mpirun -n world` job (MPICH/Hydra's PMI variables, which the
    fake tensorrt_llm's MPI helpers read)."""
    monkeypatch.setenv("PMI_RANK", str(rank))
    monkeypatch.setenv("PMI_SIZE", str(world))


def test_the_rank_comes_from_tensorrt_llm_mpi_not_open_mpi_variables(tp2_engine_dir, fake_trtllm, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")  # an MPICH/PMI launch does not set these
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    play_rank(monkeypatch, 1, 2)
    ex = open_executor(tp2_engine_dir)
    assert ex.rank == 1 and not ex.is_leader
    with pytest.raises(FathomError, match="^request a: MPI rank 1 is not the leader; only rank 0 takes requests$"):
        ex.submit(Request("a", [1, 2], SamplingParams()))
    play_rank(monkeypatch, 0, 2)
    assert open_executor(tp2_engine_dir).is_leader


def test_an_mpi_world_that_is_not_the_engines_ranks_is_refused(tp2_engine_dir, engine_dir, fake_trtllm, monkeypatch):
    with pytest.raises(FathomError, match=r"the engine has 2 ranks; run under mpirun -n 2 \(this process sees an MPI "
                                          r"world of 1\)$"):
        open_executor(tp2_engine_dir)
    play_rank(monkeypatch, 0, 2)
    with pytest.raises(FathomError, match="the engine has 1 ranks; run under mpirun -n 1"):
        open_executor(engine_dir)


def run_cli(*args):
    from fathom.runtime.cli import main

    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", [
    ["generate", "{engine}", "-p", "hi", "--tokenizer", str(DEMO_DIR), "--json"],
    ["bench", "{engine}", "--num-requests", "2", "--input-len", "4", "--output-len", "2", "--no-profile",
     "--out", "{tmp}/runs.jsonl", "--json"],
    ["serve", "{engine}", "--tokenizer", str(DEMO_DIR), "--port", "1"],
    ["chat", "{engine}", "--tokenizer", str(DEMO_DIR)],
])
def test_a_follower_rank_serves_the_engine_until_the_leader_shuts_down_then_exits_0(
        tp2_engine_dir, fake_trtllm, monkeypatch, tmp_path, command):
    import fathom.runtime.serve.runner as runner
    import fathom.runtime.trtllm_executor as te

    monkeypatch.setattr(te, "local_gpu_name", lambda: H100)
    monkeypatch.setattr(runner, "serve", lambda *a, **k: pytest.fail("a follower rank bound a port"))
    play_rank(monkeypatch, 1, 2)
    fake_trtllm.LEADER_DONE.set()  # the leader, another process, has shut down
    r = run_cli(*[a.format(engine=tp2_engine_dir, tmp=tmp_path) for a in command])
    assert r.exit_code == 0, r.output
    assert [c for c in fake_trtllm.CALLS if c[0] in ("shutdown", "enqueue_request")] == [("shutdown",)]
    assert "{" not in r.output and ">>>" not in r.output and "fathom serve:" not in r.output
    assert not (tmp_path / "runs.jsonl").exists()


def test_fathom_serve_runs_an_engine_through_the_trtllm_executor(engine_dir, fake_trtllm):
    import httpx

    from fathom.runtime.chat import load_tokenizer
    from serve_harness import running, state_for

    tok = load_tokenizer(DEMO_DIR)
    state = state_for(open_executor(engine_dir, eos_ids=()), tok, 128)
    prompt = [5, 6, 7]
    with running(state) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": prompt, "max_tokens": 4,
                                                       "temperature": 0}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == tok.decode(script_tokens(fake_trtllm, prompt, 4))
        refused = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": prompt, "max_tokens": 4,
                                                             "logprobs": 1}, timeout=30)
        assert refused.status_code == 400 and "not supported by the trtllm executor" in refused.text


def test_the_leader_shuts_its_executor_down_once_on_close_or_when_collected(engine_dir, fake_trtllm):
    import gc

    shutdowns = lambda: [c for c in fake_trtllm.CALLS if c[0] == "shutdown"]  # noqa: E731
    ex = open_executor(engine_dir)
    ex.close()
    ex.close()
    assert len(shutdowns()) == 1 and fake_trtllm.LEADER_DONE.is_set()  # the followers are released
    fake_trtllm.CALLS.clear()
    open_executor(engine_dir)  # dropped at once, e.g. by a command that ended with an exception
    gc.collect()
    assert len(shutdowns()) == 1



def test_a_followers_serve_follower_blocks_until_the_leader_shuts_down(tp2_engine_dir, fake_trtllm, monkeypatch):
    play_rank(monkeypatch, 1, 2)
    follower = open_executor(tp2_engine_dir)
    serving = threading.Thread(target=follower.serve_follower)
    serving.start()
    serving.join(0.2)
    assert serving.is_alive()  # still serving: the leader has not shut down
    fake_trtllm.LEADER_DONE.set()  # what the leader's shutdown() does on every rank
    serving.join(10)
    assert not serving.is_alive()
