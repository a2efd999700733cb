"""A tensor-parallel rank other than 0: load this rank's shard, join the group, run the steps rank 0 sends.

Started by fathom.runtime.tp_launch (spawn start method). The worker reads only its own rank file,
then waits on its pipe: "cache" opens its paged cache (its own KV heads, the blocks all ranks
agree on), "step" replays rank 0's slot-table edits, receives the step's integers by broadcast and
runs the same `ModelRunner.run` on its shard, "usage" reports what it loaded, its threads, its RSS
before loading and its peak RSS since, "close" leaves the group. When rank 0 is gone (end of file
on the pipe, or a broken collective) the worker exits.

Ctrl-C in a terminal reaches every process of its foreground group, workers included: a worker
ignores SIGINT, since rank 0 owns shutdown (a server drains its requests, then closes the workers).
"""

from __future__ import annotations

import signal
import sys
import traceback
from dataclasses import replace

import torch

from fathom.build.errors import FathomError

from .host_usage import host_rss_bytes, reset_peak_rss, rss_high_water_bytes
from .tensor_parallel import TensorParallel


def worker_main(spec, rank: int, conn) -> None:
    """Process entry point; exit code 0 after "close" or when rank 0 is gone, 1 on an error (one line
    for a FathomError, else the traceback), 130 for a Ctrl-C that arrived while the process started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve_rank(spec, rank, conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # rank 0 is gone: nothing left to serve
    except KeyboardInterrupt:
        sys.exit(130)
    except FathomError as e:
        print(f"fathom tensor-parallel rank {rank}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except BaseException:
        print(f"fathom tensor-parallel rank {rank}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        conn.close()


def serve_rank(spec, rank: int, conn) -> None:
    from .loader import load_rank_model
    from .model_runner import ModelRunner
    from .tp_launch import init_group
    from .torch_executor import open_cache, plan_cache

    torch.set_num_threads(spec.threads)
    device = spec.device(rank)
    if spec.device_type == "cuda":
        torch.cuda.set_device(device)
    reset_peak_rss()
    rss_before_load = host_rss_bytes()
    tp = TensorParallel(rank, spec.size)
    model, weights_bytes = load_rank_model(spec.checkpoint, tp, spec.dtype, device, spec.max_seq_len)
    conn.send(("loaded", rank))
    init_group(spec, rank)
    runner = None
    try:
        while True:
            message = conn.recv()
            kind = message[0]
            if kind == "step":
                _, step, edits = message
                runner.cache.replay(edits)
                data = tp.broadcast(torch.empty(step.data_len, dtype=torch.int64, device=model.device))
                with torch.inference_mode():
                    runner.run(step, data)
            elif kind == "cache":
                _, config, max_seq_len = message
                plan = plan_cache(model, config, max_seq_len)
                blocks = torch.tensor([plan.num_blocks], dtype=torch.int64, device=model.device)
                plan = replace(plan, num_blocks=int(tp.all_reduce_min(blocks).item()))
                cache = open_cache(model, config, max_seq_len, plan)
                runner = ModelRunner(model, cache, config.max_num_seqs, max_seq_len, cuda_graphs=False)
            elif kind == "usage":
                conn.send({"rank": rank, "device": device, "weights_bytes": weights_bytes,
                           "threads": torch.get_num_threads(), "rss_before_load_bytes": rss_before_load,
                           "peak_rss_bytes": rss_high_water_bytes()})
            elif kind == "close":
                return
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()
