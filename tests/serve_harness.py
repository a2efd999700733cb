"""A real fathom server on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace

from fathom.runtime.cli.common import open_runtime
from fathom.runtime.serve.app import ServerConfig, ServerState
from fathom.runtime.serve.engine import EngineLoop
from fathom.runtime.serve.metrics import ServerMetrics
from fathom.runtime.serve.runner import make_server

QUESTION = "What is 457 + 68? Please reason step by step, and put your final answer within \\boxed{}."


def demo_state(executor: str = "torch", max_seq_len: int = 256, **config) -> ServerState:
    _, ex, tok = open_runtime("demo", executor, "float32", "cpu", None, max_seq_len, 1,
                              max_num_seqs=16, prefix_reuse=True)
    return state_for(ex, tok, max_seq_len, **config)


def state_for(ex, tok, max_seq_len: int, **config) -> ServerState:
    engine = EngineLoop(ex)
    return ServerState(replace(ServerConfig("demo", max_seq_len), **config), engine, tok,
                       ServerMetrics(engine, None), ex.name)


@contextmanager
def running(state: ServerState, grace_s: float = 5.0):
    """Yields the base URL; stops the server and the engine afterwards."""
    server = make_server(state, "127.0.0.1", 0, "warning", grace_s)
    state.engine.start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
        state.engine.stop()
