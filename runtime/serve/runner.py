"""Run the app under uvicorn with a draining shutdown.

SIGTERM or SIGINT: stop accepting connections (uvicorn closes its sockets), report 503 on /health,
let running requests finish, and after `grace_s` end those still running with finish_reason
"abort" so every client gets a complete response; then exit 0. A second SIGINT exits at once.
"""

from __future__ import annotations

import signal
import threading

import uvicorn

from .app import ServerState, create_app

EXTRA_SHUTDOWN_S = 5.0  # after the abort, time for the last chunks to reach their clients


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float):
        super().__init__(config)
        self.state, self.grace_s = state, grace_s
        self._abort_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame) -> None:
        # Not uvicorn's: it re-raises the signal after shutdown, which would end the process with
        # the signal's status instead of 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        self.drain()

    def drain(self) -> None:
        if self.should_exit:
            return
        self.state.draining = True
        self.should_exit = True
        self._abort_timer = threading.Timer(self.grace_s, self.state.engine.abort_all)
        self._abort_timer.daemon = True
        self._abort_timer.start()


def make_server(state: ServerState, host: str, port: int, log_level: str = "info", grace_s: float = 30.0
                ) -> DrainingServer:
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=grace_s + EXTRA_SHUTDOWN_S, lifespan="off")
    return DrainingServer(config, state, grace_s)


def serve(state: ServerState, host: str, port: int, log_level: str = "info", grace_s: float = 30.0) -> None:
    server = make_server(state, host, port, log_level, grace_s)
    state.engine.start()
    try:
        server.run()
    finally:
        state.engine.stop()
