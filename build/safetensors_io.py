"""A streaming safetensors writer: the header is computed from the planned shapes, then tensors are
appended one at a time, so a file of any size is written with one tensor in memory.

`safetensors.torch.save_file` needs every tensor of a file at once, which for a 30 GB model means
holding it all. The format is small enough to write directly (huggingface/safetensors README):
8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin,
end]}, "__metadata__": {...}} padded with spaces to a multiple of 8, then the raw little-endian
bytes of each tensor back to back, offsets relative to the end of the header.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WeightsError
from .weights import SAFETENSORS_DTYPES

DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class PlannedEntry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def encode_header(entries: list[PlannedEntry], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length prefix and the padded JSON header for tensors stored in `entries` order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for e in entries:
        if e.dtype not in DTYPE_CODES:
            raise WeightsError(f"tensor '{e.name}': dtype {e.dtype} cannot be stored in safetensors")
        header[e.name] = {"dtype": DTYPE_CODES[e.dtype], "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keeps tensor data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class WriteBehind:
    """Writes buffers to their files on one background thread, at most `depth` buffers queued.

    Writing a checkpoint is bound by the disk; this lets the next tensor be read, checked and
    hashed while the previous one is written. Queued buffers keep their tensors alive, so memory
    grows by at most `depth` tensors. Use as a context manager: on error, queued writes are dropped.
    """

    def __init__(self, depth: int = 1):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._cancelled = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fathom-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                file, data, _keep_alive = item
                if self.error is None and not self._cancelled:
                    file.write(data)
            except BaseException as e:  # re-raised in the caller's thread by put/drain
                self.error = e
            finally:
                self._queue.task_done()

    def _check(self) -> None:
        if self.error is not None:
            raise WeightsError(f"writing the checkpoint failed ({self.error})") from self.error

    def put(self, file, data, keep_alive=None) -> None:
        self._check()
        self._queue.put((file, data, keep_alive))

    def drain(self) -> None:
        """Wait until every queued buffer is written."""
        self._queue.join()
        self._check()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cancelled = exc_type is not None
        self._queue.put(None)
        self._thread.join()


class SafetensorsWriter:
    """Writes `entries` in order; `write` checks each tensor against the plan. Use as a context manager.

    With a `WriteBehind`, file writes happen on its thread; the sha256 is computed here, in order.
    """

    def __init__(self, path: str | Path, entries: list[PlannedEntry], metadata: dict[str, str] | None = None,
                 sink: WriteBehind | None = None):
        self.path = Path(path)
        self.entries = list(entries)
        self._next = 0
        self._sha = hashlib.sha256()
        self._sink = sink
        header = encode_header(self.entries, metadata)
        self.nbytes = len(header) + sum(e.nbytes for e in self.entries)
        self._file = open(self.path, "wb")
        self._put(header)
        self.sha256: str | None = None

    def _put(self, data, keep_alive=None) -> None:
        self._sha.update(data)
        if self._sink is not None:
            self._sink.put(self._file, data, keep_alive)
        else:
            self._file.write(data)

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append the next planned tensor; returns the bytes written."""
        if self._next >= len(self.entries):
            raise WeightsError(f"{self.path}: tensor '{name}' was not planned for this file")
        e = self.entries[self._next]
        if name != e.name or tuple(tensor.shape) != e.shape or tensor.dtype != e.dtype:
            raise WeightsError(f"{self.path}: expected tensor '{e.name}' {e.shape} {e.dtype} next, "
                               f"got '{name}' {tuple(tensor.shape)} {tensor.dtype}")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._put(memoryview(flat.numpy()), keep_alive=flat)
        self._next += 1
        return e.nbytes

    def close(self) -> str:
        """Flush to disk (fsync: the directory is renamed into place afterwards) and return the sha256."""
        if self._next != len(self.entries):
            missing = self.entries[self._next].name
            self._file.close()
            raise WeightsError(f"{self.path}: closed before tensor '{missing}' was written")
        if self._sink is not None:
            self._sink.drain()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.sha256 = self._sha.hexdigest()
        return self.sha256

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
