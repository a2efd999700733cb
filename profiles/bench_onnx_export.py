"""Measure `fathom export onnx` on a Fathom-size model: time and peak memory against the weight bytes
(not a test).

Exports `random:fathom-r1-14b-4l` (Fathom-R1-14B's widths and vocabulary, 4 of its 48 layers: 2.66 B
parameters, 5.3 GB in bfloat16) in a fresh child process per dtype, and with `--hf` also the same
preset written as a bf16 Hugging Face directory (fathom.profiles.bench_convert.ensure_source), the
path a real Fathom-R1-14B download takes. The child reads VmHWM (peak RSS) when the weights are
loaded, resets it (`echo 5 > /proc/self/clear_refs`), and reads it again when the export is written
and checked: the second peak shows whether the exporter holds a second copy of the weights (it would
be about twice the weight bytes). A thread also samples RssAnon every 20 ms: the safetensors files
of an HF directory are memory-mapped while they are read, and those clean file pages count in RSS
but not in RssAnon.
Result: profiles/results/onnx_export_<hostname>.json, with the machine's environment
(fathom.runtime.records.environment).

    python -m fathom.profiles.bench_onnx_export --dtype bfloat16 --hf
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from fathom.profiles.process_memory import SAMPLE_INTERVAL_S, AnonPeak, proc_status_bytes, reset_peak_rss


def child_export(spec: str, out: str, dtype: str) -> None:
    """Runs in a fresh process: export and print one JSON line of memory by phase."""
    import fathom.runtime.onnx_export as onnx_export
    from fathom.build.sources import resolve_model

    phases = {"start": proc_status_bytes()}
    load = onnx_export.export_tensors

    def measured_load(source, torch_dtype):
        tensors = load(source, torch_dtype)
        phases["weights_loaded"] = {**proc_status_bytes(),
                                    "weight_bytes": sum(t.numel() * t.element_size() for t in tensors.values())}
        reset_peak_rss()
        return tensors

    onnx_export.export_tensors = measured_load  # the phase boundary; the export itself is unchanged
    with AnonPeak() as anon:
        result = onnx_export.export_onnx(resolve_model(spec), out, onnx_export.OnnxExportOptions(dtype=dtype, force=True))
    phases["written"] = proc_status_bytes()
    print(json.dumps({"export": result, "phases": phases, "peak_anon_bytes": anon.peak_bytes}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:fathom-r1-14b-4l")
    p.add_argument("--dtype", nargs="+", default=["bfloat16"])
    p.add_argument("--hf", action="store_true", help="also export the preset written as a bf16 HF directory")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fathom-bench-onnx"))
    p.add_argument("--keep", action="store_true", help="keep the exported directories")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).parent / "results" / f"onnx_export_{socket.gethostname()}.json")
    p.add_argument("--child", nargs=3, metavar=("MODEL", "OUT", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_export(*args.child)
        return

    from fathom.runtime.records import environment

    args.workdir.mkdir(parents=True, exist_ok=True)
    models = [args.model]
    if args.hf:
        from fathom.profiles.bench_convert import ensure_source

        models.append(str(ensure_source(args.model.removeprefix("random:"), args.workdir, 2 << 30)[0]))
    runs = []
    for model, dtype in [(m, d) for m in models for d in args.dtype]:
        out = args.workdir / f"onnx-{dtype}"
        cmd = [sys.executable, "-m", "fathom.profiles.bench_onnx_export", "--child", model, str(out), dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"export {model} {dtype} failed:\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        export, phases = child["export"], child["phases"]
        loaded, written = phases["weights_loaded"], phases["written"]
        weights = loaded["weight_bytes"]
        runs.append({
            "model": model, "dtype": dtype, "weight_bytes": weights, "seconds": export["seconds"],
            "export_s": export["export_s"],
            "external_data": export["external_data"], "opset": export["opset"],
            "files": {f["name"]: f["bytes"] for f in export["files"]},
            "peak_rss_loading_bytes": loaded["VmHWM"],
            "rss_weights_loaded_bytes": loaded["VmRSS"],
            "peak_rss_exporting_bytes": written["VmHWM"],
            "peak_rss_exporting_over_loaded_bytes": written["VmHWM"] - loaded["VmRSS"],
            "peak_rss_exporting_per_weight_byte": round(written["VmHWM"] / weights, 3),
            "peak_anon_bytes": child["peak_anon_bytes"], "anon_sample_interval_s": SAMPLE_INTERVAL_S,
            "rss_start_bytes": phases["start"]["VmRSS"],
        })
        r = runs[-1]
        print(f"{model} {dtype}: {r['seconds']:.1f} s, weights {weights / 2**30:.2f} GiB, peak RSS loading "
              f"{r['peak_rss_loading_bytes'] / 2**30:.2f} GiB, exporting {r['peak_rss_exporting_bytes'] / 2**30:.2f} "
              f"GiB ({r['peak_rss_exporting_per_weight_byte']}x the weights), peak anon "
              f"{r['peak_anon_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    record = {
        "benchmark": "onnx_export", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(), "runs": runs,
        "phases_note": "loading: reading/generating the weights and casting them to the dtype; exporting: "
                       "torch.onnx.export(dynamo=True), the graph optimizer, writing model.onnx(.data), "
                       "onnx.checker, hashing; VmHWM is reset between the two",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
