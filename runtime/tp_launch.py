"""Rank 0 of the tensor-parallel torch executor (`--tp N`): spawn the other ranks, drive them, end them.

The calling process is rank 0: it keeps the scheduler, sampling and the executor interface
(fathom.runtime.torch_executor). Ranks 1..N-1 are processes it spawns
(torch.multiprocessing, "spawn" start method; fathom.runtime.tp_worker), each loading only its own
`rank{r}.safetensors` of a checkpoint converted with `--tp N`. They join one torch.distributed
group (NCCL on CUDA, rank r on cuda:r; gloo on the CPU) through a TCP rendezvous on a free
127.0.0.1 port.

Two channels per worker:
- a pipe for control (open the cache, run a step, report usage, close): a worker sleeps in
  `recv` while the executor is idle, so an idle server holds no collective open, and the pipe's
  end-of-file tells a worker that rank 0 is gone;
- the process group for tensors: each step's integers (token ids, positions, cache slots, rows,
  sampled positions) are broadcast from rank 0, then every rank runs the forward on its shard
  (fathom.runtime.tensor_parallel: two all-reduces per layer, logits gathered on rank 0).

Failure: rank 0 checks that every worker is alive before each message it sends, and waits for each
step (and the cache agreement) in `collective`. With gloo a collective whose peer is gone fails
at once. NCCL would block instead (until COLLECTIVE_TIMEOUT, when its watchdog ends the process), so
on CUDA rank 0 polls a CUDA event recorded after the step while checking the workers every
LIVENESS_CHECK_S. Either way a rank that is gone makes the step raise a one-line FathomError, and
the executor is broken from then on. A worker stuck in a collective when rank 0 itself dies (killed)
stays blocked until COLLECTIVE_TIMEOUT on NCCL; an idle one sees end-of-file on its pipe and exits.

Shutdown: `close` (also run when the executor is garbage-collected and at interpreter exit) asks
each worker to leave, joins it and terminates one that does not (at once when the group is broken);
workers are daemonic. Rank 0 then leaves the group: `destroy_process_group`, or on a broken NCCL
group `_abort_process_group` (torch/distributed/distributed_c10d.py, torch 2.13 as installed here),
since ProcessGroupNCCL's `shutdown()` waits for the in-flight NCCL kernels and `abort()` ends them
(torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp; the copy read is a pytorch fork's, with the
`HeartbeatMonitor` class, version not pinned).

Ctrl-C: the workers share the terminal's process group but ignore SIGINT (fathom.runtime.tp_worker);
rank 0 owns shutdown, so a server drains its requests on all ranks before closing them.

Threads: a step runs on one thread (the executor's caller); `describe` may come from another, so each
exchange on the pipes holds one lock.
"""

from __future__ import annotations

import socket
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar

import torch

from fathom.build.errors import ConfigError, FathomError
from fathom.build.sources import ModelSource

from .tensor_parallel import TensorParallel

# A collective waits this long for the other ranks (also the rendezvous, while rank 0 loads its shard);
# they only enter one while a step runs or the cache opens.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
LOAD_POLL_S = 0.2
JOIN_TIMEOUT_S = 10.0
LIVENESS_CHECK_S = 0.05  # while rank 0 waits for a CUDA step: how often it looks at the workers
EVENT_POLL_S = 1e-4  # between two looks at the step's CUDA event (the sleep lets other threads run)

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerSpec:
    """What every rank needs to load its shard and join the group."""

    checkpoint: str
    size: int
    dtype: str
    device_type: str  # "cpu" | "cuda" (rank r runs on cuda:r)
    max_seq_len: int
    threads: int  # CPU intra-op threads per rank
    port: int  # rendezvous on 127.0.0.1

    def device(self, rank: int) -> str:
        return f"cuda:{rank}" if self.device_type == "cuda" else "cpu"

    @property
    def backend(self) -> str:
        """The torch.distributed backend: NCCL between GPUs, gloo on the CPU."""
        return "nccl" if self.device_type == "cuda" else "gloo"


def init_group(spec: WorkerSpec, rank: int) -> None:
    """Join the default process group of `spec.size` ranks (blocks until all have joined)."""
    import torch.distributed as dist

    dist.init_process_group(spec.backend, init_method=f"tcp://127.0.0.1:{spec.port}", rank=rank,
                            world_size=spec.size, timeout=COLLECTIVE_TIMEOUT)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 when asked. Another process may bind it before rank 0's
    rendezvous store does; the executor then fails to open with torch's "address already in use"
    (accepted: the window is the time it takes rank 0 to load its shard, and a retry picks a new port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_devices(device: str, tp: int) -> str:
    """The device type the ranks run on; one-line errors for what cannot run."""
    if device.startswith("cuda"):
        if device not in ("cuda", "cuda:0"):
            raise ConfigError(f"--device {device}: with --tp, rank r runs on cuda:r; pass --device cuda "
                              "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count()
        if tp > count:
            raise ConfigError(f"--tp {tp}: needs {tp} CUDA devices, {count} visible")
        return "cuda"
    if device != "cpu":
        raise ConfigError(f"--device {device}: expected cpu or cuda with --tp")
    return "cpu"


class TPWorkers:
    """Ranks 1..N-1 as seen from rank 0: their processes, their pipes, this rank's place in the group."""

    def __init__(self, spec: WorkerSpec):
        from .tp_worker import worker_main

        self.spec = spec
        self.tp = TensorParallel(0, spec.size)
        self.leader: dict = {"rank": 0, "device": spec.device(0)}  # rank 0's part of `describe`
        self.broken = threading.Event()  # set once a rank is gone or a collective failed
        self._pipes = threading.RLock()  # one exchange on the pipes at a time
        ctx = torch.multiprocessing.get_context("spawn")
        self.procs, self.conns = [], []
        for rank in range(1, spec.size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, rank, child), name=f"fathom-tp-rank{rank}", daemon=True)
            proc.start()
            child.close()  # only the worker holds its end: a dead worker means a broken pipe here
            self.procs.append(proc)
            self.conns.append(parent)
        self._close = weakref.finalize(self, _shutdown, self.procs, self.conns, spec.backend, self.broken)

    # ---- start ------------------------------------------------------------------------
    def join_group(self) -> None:
        """Wait for every worker to load its shard, then form the process group with them."""
        for rank, (proc, conn) in enumerate(zip(self.procs, self.conns), start=1):
            while not conn.poll(LOAD_POLL_S):
                if not proc.is_alive():
                    raise self.failure()
            self._recv(conn, rank)  # "loaded"
        init_group(self.spec, 0)

    def open_cache(self, config, max_seq_len: int, num_blocks: int) -> int:
        """Have every worker open its paged cache; the blocks every rank gets: the fewest any rank
        holds (`num_blocks` is rank 0's, planned before the workers are asked)."""
        self._send(("cache", config, max_seq_len))
        blocks = torch.tensor([num_blocks], dtype=torch.int64, device=self.spec.device(0))
        return int(self.collective(lambda: self.tp.all_reduce_min(blocks)).item())

    # ---- per step ---------------------------------------------------------------------
    def send_step(self, step, edits: list, data: torch.Tensor) -> None:
        """Hand one step to every worker: its plan and slot-table edits by pipe, its integers by broadcast."""
        self._send(("step", step, edits))
        try:
            self.tp.broadcast(data)
        except RuntimeError as e:
            raise self.failure(e) from None

    def collective(self, run: Callable[[], T]) -> T:
        """`run()`, this rank's part of collectives with the workers, and wait until it is done; a
        rank that is gone raises a one-line FathomError instead of blocking (see the module docstring)."""
        try:
            result = run()
            if self.spec.device_type == "cuda":
                done = torch.cuda.Event()
                done.record()
                self.wait_until(done.query)
        except RuntimeError as e:
            raise self.failure(e) from None
        return result

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Poll `done` until it is true, checking every LIVENESS_CHECK_S that every worker is alive."""
        next_check = time.monotonic()
        while not done():
            if time.monotonic() >= next_check:
                self.check_alive()
                next_check = time.monotonic() + LIVENESS_CHECK_S
            time.sleep(EVENT_POLL_S)

    def describe(self) -> dict:
        """Size, backend and each rank's device, weights read, threads and (workers) peak RSS so far."""
        with self._pipes:
            self._send(("usage",))
            ranks = [self._recv(conn, rank) for rank, conn in enumerate(self.conns, start=1)]
        return {"size": self.spec.size, "backend": self.spec.backend, "ranks": [self.leader, *ranks]}

    # ---- failure and shutdown ---------------------------------------------------------
    def check_alive(self) -> None:
        """A one-line FathomError if a worker has exited."""
        if not all(proc.is_alive() for proc in self.procs):
            raise self.failure()

    def failure(self, error: BaseException | None = None) -> FathomError:
        """A one-line error naming the worker that is gone (else the collective's own first line);
        the group is broken from then on."""
        self.broken.set()
        for rank, proc in enumerate(self.procs, start=1):
            proc.join(0.5 if error is not None else 0)
            if proc.exitcode is not None:
                return FathomError(f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code {proc.exitcode}; "
                                   "this executor cannot continue")
        first = (str(error).strip().splitlines() or [type(error).__name__])[0] if error else "no reply"
        return FathomError(f"tensor-parallel step failed: {first}")

    def close(self) -> None:
        """Ask every worker to leave and wait for it, then leave the group (once)."""
        self._close()

    def _send(self, message: tuple) -> None:
        with self._pipes:
            self.check_alive()
            try:
                for conn in self.conns:
                    conn.send(message)
            except OSError as e:
                raise self.failure(e) from None

    def _recv(self, conn, rank: int):
        try:
            return conn.recv()
        except (EOFError, OSError) as e:
            raise self.failure(e) from None


def _shutdown(procs, conns, backend: str, broken: threading.Event) -> None:
    for conn in conns:
        try:
            conn.send(("close",))
        except OSError:
            pass  # already gone
    for proc in procs:
        proc.join(0 if broken.is_set() else JOIN_TIMEOUT_S)  # a broken group's workers may sit in a collective
        if proc.is_alive():
            proc.terminate()
            proc.join(JOIN_TIMEOUT_S)
    for conn in conns:
        conn.close()
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if broken.is_set() and backend == "nccl":
        dist.distributed_c10d._abort_process_group()
    else:
        dist.destroy_process_group()


def open_tensor_parallel(source: ModelSource, tp: int, dtype: str, device: str, max_seq_len: int,
                         eos_ids: list[int] | None, threads: int, config):
    """A TorchExecutor over `tp` ranks of a checkpoint converted with `--tp tp` (this process is rank 0)."""
    import torch.distributed as dist

    from .loader import check_tp_checkpoint, load_rank_model
    from .torch_executor import TorchExecutor

    check_tp_checkpoint(source, tp)
    device_type = check_devices(device, tp)
    if dist.is_initialized():
        raise ConfigError(f"--tp {tp}: this process already belongs to a torch.distributed group "
                          "(close the other tensor-parallel executor first)")
    spec = WorkerSpec(str(source.path), tp, dtype, device_type, max_seq_len, threads, free_port())
    workers = TPWorkers(spec)
    try:
        model, nbytes = load_rank_model(source.path, workers.tp, dtype, spec.device(0), max_seq_len)
        workers.leader.update(weights_bytes=nbytes, threads=torch.get_num_threads())
        workers.join_group()
        return TorchExecutor(model, eos_ids=eos_ids, max_seq_len=max_seq_len, config=config, workers=workers)
    except BaseException:
        workers.close()
        raise
