"""Benchmark `fathom convert` on a several-GB synthetic checkpoint (not a test).

Writes a sharded bf16 HF dir of preset `fathom-r1-14b-4l` (Fathom widths, 4 layers, ~5.3 GB), reads
its files once sequentially and writes as many bytes with fsync (the read and write ceilings of
this machine, same run, same page-cache state), then converts it in a fresh child process per
mapping while sampling the child's RssAnon: peak anonymous memory is what the streaming design
bounds (about 2x the largest tensor + 1 GiB); VmHWM (peak RSS) also counts the clean file pages
safetensors maps from the source, which the kernel can drop.
Result: profiles/results/convert_<hostname>.json.

    python -m fathom.profiles.bench_convert --tp 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from fathom.profiles.process_memory import SAMPLE_INTERVAL_S, AnonPeak, proc_status_bytes

READ_CHUNK_BYTES = 16 << 20


def machine_info() -> dict:
    cpu = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_total = None
    try:
        mem_total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    import torch

    from fathom.runtime import version

    return {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": cpu, "logical_cores": os.cpu_count(), "mem_total_bytes": mem_total,
            "torch_version": torch.__version__, "fathom_version": version()}


def sequential_read(files: list[Path]) -> dict:
    """Plain read of every file, 16 MiB at a time, into one reused buffer."""
    buf = bytearray(READ_CHUNK_BYTES)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    seconds = time.perf_counter() - t0
    return {"bytes": total, "seconds": round(seconds, 3), "mb_per_s": round(total / 1e6 / seconds, 1)}


def sequential_write(path: Path, nbytes: int) -> dict:
    """Write `nbytes` 16 MiB at a time and fsync: the disk's ceiling for writing a checkpoint."""
    buf = os.urandom(READ_CHUNK_BYTES)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < nbytes:
            written += f.write(buf[:min(READ_CHUNK_BYTES, nbytes - written)])
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return {"bytes": written, "seconds": round(seconds, 3), "mb_per_s": round(written / 1e6 / seconds, 1)}


def child_convert(src: str, out: str, tp: int, pp: int, dtype: str) -> None:
    """Runs in a fresh process: convert and print a JSON line with time and memory peaks."""
    from fathom.build.convert import ConvertOptions, convert
    from fathom.build.sources import resolve_model

    baseline = proc_status_bytes()
    with AnonPeak() as anon:
        result = convert(resolve_model(src), out, ConvertOptions(dtype=dtype, tp=tp, pp=pp, force=True))
    status = proc_status_bytes()
    print(json.dumps({"convert": result, "peak_rss_bytes": status["VmHWM"], "peak_anon_bytes": anon.peak_bytes,
                      "baseline_anon_bytes": baseline["RssAnon"], "anon_sample_interval_s": SAMPLE_INTERVAL_S}))


def ensure_source(preset_name: str, workdir: Path, shard_bytes: int) -> tuple[Path, float | None]:
    import torch

    from fathom.build.config import preset
    from fathom.build.synthetic import write_hf_dir

    src = workdir / f"hf-{preset_name}"
    marker = src / ".complete"
    if marker.exists():
        return src, None
    shutil.rmtree(src, ignore_errors=True)
    t0 = time.perf_counter()
    write_hf_dir(preset(preset_name), src, seed=0, dtype=torch.bfloat16, shard_bytes=shard_bytes)
    marker.write_text("ok")
    return src, time.perf_counter() - t0


def largest_tensor_bytes(src: Path) -> int:
    from fathom.build.weights import SafetensorsDir

    tensors = SafetensorsDir(src)
    return max(tensors.nbytes(n) for n in tensors.names())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fathom-r1-14b-4l")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fathom-bench-convert"))
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--shard-gb", type=float, default=2.0)
    p.add_argument("--keep", action="store_true", help="keep the synthetic source and outputs")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"convert_{socket.gethostname()}.json")
    p.add_argument("--child", nargs=5, metavar=("SRC", "OUT", "TP", "PP", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        src, out, tp, pp, dtype = args.child
        child_convert(src, out, int(tp), int(pp), dtype)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    src, write_s = ensure_source(args.preset, args.workdir, int(args.shard_gb * 1e9))
    files = sorted(src.glob("*.safetensors"))
    source_bytes = sum(f.stat().st_size for f in files)
    largest = largest_tensor_bytes(src)
    read = sequential_read(files)
    write = sequential_write(args.workdir / "write-test.bin", source_bytes)
    runs = []
    for tp in args.tp:
        out = args.workdir / f"ckpt-tp{tp}"
        cmd = [sys.executable, "-m", "fathom.profiles.bench_convert", "--child", str(src), str(out), str(tp), "1", args.dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"convert tp={tp} failed:\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        conv = child["convert"]
        bound = 2 * largest + (1 << 30)
        runs.append({
            "tp": tp, "pp": 1, "dtype": conv["dtype"], "seconds": conv["seconds"],
            "output_bytes": conv["total_bytes"],
            "source_mb_per_s": round(source_bytes / 1e6 / conv["seconds"], 1),
            "output_mb_per_s": conv["write_mb_per_s"],
            "peak_rss_bytes": child["peak_rss_bytes"], "peak_anon_bytes": child["peak_anon_bytes"],
            "baseline_anon_bytes": child["baseline_anon_bytes"],
            "anon_sample_interval_s": child["anon_sample_interval_s"],
            "anon_bound_bytes": bound, "peak_anon_within_bound": child["peak_anon_bytes"] <= bound,
        })
        print(f"tp={tp}: {conv['seconds']:.1f} s, {runs[-1]['source_mb_per_s']} MB/s of source, "
              f"peak anon {child['peak_anon_bytes'] / 2**30:.2f} GiB (bound {bound / 2**30:.2f}), "
              f"peak RSS {child['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    record = {
        "benchmark": "convert", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(), "preset": args.preset, "source_dtype": "bfloat16",
        "source_files": len(files), "source_bytes": source_bytes, "largest_tensor_bytes": largest,
        "source_write_seconds": None if write_s is None else round(write_s, 1),
        "sequential_read": read,
        "sequential_write_fsync": write,
        "page_cache_note": "source files were written or read just before; reads are likely served from the page "
                           "cache (file size vs mem_total_bytes), for the plain read and the conversion alike",
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
