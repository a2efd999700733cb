"""One thread owns the executor; HTTP handlers submit requests and read their token events.

The executor interface is step-driven (submit / step / cancel). `EngineLoop` runs `step()` on its
own thread whenever anything is pending, so every request in flight joins the executor's continuous
batching, and the asyncio event loop never waits on a model forward. Each request has a sink, a
callable the engine thread hands its events to (an asyncio queue fed with `call_soon_threadsafe`);
an exception raised for one request (a `submit` the executor refuses) goes to that request's sink
only, and the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

from fathom.runtime.executor import Executor, KVUsage, Request, TokenEvent

log = logging.getLogger("fathom.serve")

Sink = Callable[[TokenEvent | BaseException], None]
IDLE_WAIT_S = 0.05  # how long the idle loop sleeps between looks at its inbox


@dataclass
class EngineStats:
    """Counts the metrics endpoint and admission read (written by the engine thread only)."""

    waiting: int = 0  # submitted, no token yet
    running: int = 0  # at least one token, not finished
    kv_usage: KVUsage | None = None


class EngineLoop:
    def __init__(self, executor: Executor):
        self.executor = executor
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._started: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fathom-engine", daemon=True)

    # ---- called from any thread ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request, sink: Sink) -> None:
        self._inbox.put(("submit", request, sink))
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        self._inbox.put(("cancel", request_id, None))
        self._wake.set()

    def abort_all(self) -> None:
        """End every request in flight (finish_reason "abort"): the drain deadline has passed."""
        self._inbox.put(("abort", None, None))
        self._wake.set()

    def waiting(self) -> int:
        """Requests without a first token yet, those still in the inbox included."""
        return self.stats.waiting + self._inbox.qsize()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # ---- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            if not self.executor.has_pending():
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                events = self.executor.step()
            except Exception as e:  # an executor failure ends the requests in flight, not the server
                log.exception("executor step failed; ending %d request(s)", len(self._sinks))
                self._fail_all(e)
                continue
            for event in events:
                self._deliver(event)
            self.stats.kv_usage = self.executor.kv_usage()
        self._fail_all(RuntimeError("server shutting down"))

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item, sink = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                try:
                    self.executor.submit(item)
                except Exception as e:
                    sink(e)
                    continue
                self._sinks[item.request_id] = sink
                self.stats.waiting += 1
            elif kind == "cancel" and item in self._sinks:
                self.executor.cancel(item)
            elif kind == "abort":
                for rid in list(self._sinks):
                    self.executor.cancel(rid)
                    self._deliver(TokenEvent(rid, None, 0.0, "abort"))

    def _deliver(self, event: TokenEvent) -> None:
        sink = self._sinks.get(event.request_id)
        if sink is None:
            return  # a request already ended (aborted or cancelled) may still have an event in flight
        if event.request_id not in self._started:
            self._started.add(event.request_id)
            self.stats.waiting -= 1
            self.stats.running += 1
        if event.finished:
            del self._sinks[event.request_id]
            self._started.discard(event.request_id)
            self.stats.running -= 1
        sink(event)

    def _fail_all(self, error: BaseException) -> None:
        for rid, sink in list(self._sinks.items()):
            sink(error)
            if rid in self._started:
                self.stats.running -= 1
            else:
                self.stats.waiting -= 1
        self._sinks.clear()
        self._started.clear()


def asyncio_sink(loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> Sink:
    """A sink that hands events to an asyncio queue from the engine thread."""
    return lambda item: loop.call_soon_threadsafe(q.put_nowait, item)
