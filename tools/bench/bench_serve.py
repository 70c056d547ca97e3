#!/usr/bin/env python3
"""Serving benchmark: mor_server under load from mor_loadgen, every server
configuration on the same machine and the same workload, one after another.

What `./mor bench serve` runs. It

1. picks the models: --model (default models/default when it exists, with its
   vanilla baseline --vanilla-model, default models/default-vanilla, and the
   validation text of its corpus as prompts), else the random 135M-class
   Nr = 3 MoR of `./mor bench engine` and a vanilla Llama of the same dims and
   effective depth (cached in <build>/bench-models/); a recursive-sharing
   variant of the MoR model (same weights, config kv_mode=recursive_sharing);
2. starts mor_server per configuration on 127.0.0.1 (ephemeral ports; bf16,
   2 intra-op threads by default) and drives it with mor_loadgen, repeats
   interleaved across configurations (a burst of load from elsewhere hits one
   repeat of each, not all repeats of one);
3. sections: (1) continuous depth-wise vs depth-grouped vs no depth awareness
   vs vanilla at saturation (rate inf, N in flight), adaptive routing and a
   fixed depth mix, then throughput and latency vs Poisson request rate;
   (2) continuous vs static batching (--static_batching) at a Poisson rate near
   saturation, goodput under a TTFT SLO; (3) test-time depth: fixed depth
   1..Nr vs adaptive; (4) server overhead: mor_server's output tok/s vs the
   in-process engine (mor_bench_engine) at the same concurrency; (5) KV memory
   per cached token from the server's gauges, MoR recursion-wise vs recursive
   sharing vs vanilla, and the largest batch a fixed KV budget holds;
4. writes <out>/serve.json (every run's full loadgen report), <out>/serve.md
   (the tables, also printed) and PNG plots (throughput vs request rate,
   TTFT / TPOT p50 and p99 vs rate, per-depth compute share).

Each table cell is the median of the repeats with (min-max); ratios are taken
per repeat between runs made back to back, then their median. The run is
bounded: each load run by --run-timeout, the whole benchmark by --time-limit
(later runs are skipped and the report says so).
"""

# The rest of the benchmark: bench_serve_runner.py (servers, load runs, sections)
# and bench_serve_report.py (serve.md's tables, the plots).

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine as be  # noqa: E402
from bench_common import ROOT, machine_info  # noqa: E402
from bench_serve_report import plots, report  # noqa: E402
from bench_serve_runner import ServeBench, log  # noqa: E402

QUICK_DIMS = dict(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256,
                  vocab_size=512, max_position_embeddings=512, disk_dtype="bfloat16")


# ----------------------------------------------------------------------------
# Models and prompts
# ----------------------------------------------------------------------------

def recursive_sharing_copy(src: str, dst: str) -> None:
    """`src` with kv_mode = recursive_sharing: its config, symlinked weights."""
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["kv_mode"] = "recursive_sharing"
    stamp = {"src": os.path.abspath(src), "mtime": os.path.getmtime(os.path.join(src, "config.json"))}
    try:
        with open(os.path.join(dst, "bench-source.json")) as f:
            if json.load(f) == stamp:
                return
    except (OSError, ValueError):
        pass
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in os.listdir(src):
        if name.endswith(".safetensors") or name in ("model.safetensors.index.json",
                                                      "tokenizer.json"):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(dst, "bench-source.json"), "w") as f:
        json.dump(stamp, f)


def find_dataset(model_dir: str, arg: str) -> str:
    """--dataset auto: the model's val.txt, or its training corpus's val.txt."""
    if arg != "auto":
        return arg
    candidates = [os.path.join(model_dir, "val.txt")]
    try:
        with open(os.path.join(model_dir, "train_log.json")) as f:
            corpus = json.load(f).get("args", {}).get("corpus")
        if corpus:
            candidates.append(os.path.join(corpus if os.path.isabs(corpus)
                                           else os.path.join(ROOT, corpus), "val.txt"))
    except (OSError, ValueError):
        pass
    # Where `./mor train` prepares the corpus (the log's path may be another machine's).
    candidates.append(os.path.join(ROOT, "build", "train", "corpus", "val.txt"))
    return next((c for c in candidates if os.path.isfile(c)), "random")


def resolve_models(args, models_dir: str) -> dict:
    default = os.path.abspath(args.model)
    if args.quick:
        kind = "tiny random (--quick)"
        mor = os.path.join(models_dir, "serve-quick-mor")
        be.ensure_model(mor, dict(QUICK_DIMS, sharing="middle_cycle", router_type="expert_choice",
                                  router_arch="linear", kv_mode="recursion_wise",
                                  num_recursions=3, block_layers=2, seed=0))
    elif os.path.isfile(os.path.join(default, "config.json")):
        kind, mor = "trained", default
    else:
        kind = "random 135M-class (no trained model at " + os.path.relpath(default, ROOT) + ")"
        mor = os.path.join(models_dir, "engine-mor-nr3")
        be.ensure_model(mor, be.mor_spec(3))
    dims, layers, nr, block = be.default_model_dims(mor)
    vanilla = args.vanilla_model
    if not vanilla and kind == "trained":
        guess = default.rstrip("/") + "-vanilla"
        vanilla = guess if os.path.isfile(os.path.join(guess, "config.json")) else ""
    if not vanilla and kind.startswith("random"):  # the same model as ./mor bench engine's
        vanilla = os.path.join(models_dir, f"engine-vanilla-{layers}l")
        be.ensure_model(vanilla, be.vanilla_spec(be.DIMS), vanilla_layers=layers)
    elif not vanilla:
        vanilla = os.path.join(models_dir, f"serve-vanilla-{os.path.basename(mor)}-{layers}l")
        be.ensure_model(vanilla, be.vanilla_spec(dims), vanilla_layers=layers)
    rs = args.rs_model or os.path.join(models_dir, f"serve-rs-{os.path.basename(mor)}")
    if not args.rs_model:
        recursive_sharing_copy(mor, rs)
    dataset = find_dataset(mor, args.dataset)
    tokenizer = os.path.join(mor, "tokenizer.json")
    return {"kind": kind, "mor": mor, "vanilla": vanilla, "rs": rs, "nr": nr, "layers": layers,
            "block": block, "dims": dims, "dataset": dataset,
            "tokenizer": tokenizer if os.path.isfile(tokenizer) else None}


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--out", default=None, help="output folder (default <build-dir>/bench-serve)")
    ap.add_argument("--models-dir", default=None,
                    help="cache of generated models (default <build-dir>/bench-models)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default"),
                    help="MoR model; when absent, a random 135M-class Nr=3 model is used")
    ap.add_argument("--vanilla-model", default="",
                    help="vanilla baseline (default <model>-vanilla when it exists, else random "
                         "weights with the MoR's dims and layer count)")
    ap.add_argument("--rs-model", default="",
                    help="recursive-sharing model (default: the MoR weights, kv_mode changed)")
    ap.add_argument("--dataset", default="auto",
                    help="prompt text file, 'random', or auto (the model's validation text)")
    ap.add_argument("--sections", default="batching,rates,depth,static,kv,overhead")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight (saturation)")
    ap.add_argument("--num-prompts", type=int, default=0,
                    help="requests per saturation run (default: calibrated to --target-seconds)")
    ap.add_argument("--target-seconds", type=float, default=8.0)
    ap.add_argument("--max-rounds", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate-fractions", type=floats, default=floats("0.3,0.6,0.9"),
                    help="Poisson rates of the sweep, fractions of the depth-wise saturation rate")
    ap.add_argument("--sweep-seconds", type=float, default=6.0)
    ap.add_argument("--static-rate-fraction", type=float, default=0.9)
    ap.add_argument("--static-output-range", type=float, default=0.5)
    ap.add_argument("--static-seconds", type=float, default=15.0,
                    help="length of the static-vs-continuous runs (arrivals), seconds")
    ap.add_argument("--slo-ttft-ms", type=int, default=2000)
    ap.add_argument("--kv-cache-mib", type=int, default=512, help="each server's --kv_cache_bytes")
    ap.add_argument("--kv-budget-mib", type=int, default=1024,
                    help="budget of the 'largest batch' column")
    ap.add_argument("--kv-sample-ms", type=int, default=250,
                    help="how often mor_loadgen samples the server's KV gauges")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-timeout", type=int, default=120, help="seconds per load run")
    ap.add_argument("--time-limit", type=float, default=1800,
                    help="seconds for the whole benchmark; later runs are skipped")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny random models, 8 in flight, 1 repeat, 1 thread, short "
                         "runs (< 1 min)")
    args = ap.parse_args(argv)
    if args.quick:
        args.concurrency, args.input_len, args.output_len = 8, 16, 8
        args.repeats, args.num_prompts, args.sweep_seconds = 1, 16, 2.0
        args.rate_fractions, args.static_seconds, args.kv_cache_mib = [0.5], 3.0, 64
        args.dataset = "random" if args.dataset == "auto" else args.dataset
        args.run_timeout, args.time_limit = 60, min(args.time_limit, 600)
        args.kv_sample_ms, args.threads = 20, 1  # 1 thread: robust on a busy machine

    t0 = time.monotonic()
    build_dir = os.path.abspath(args.build_dir)
    out_dir = os.path.abspath(args.out or os.path.join(build_dir, "bench-serve"))
    os.makedirs(out_dir, exist_ok=True)
    models = resolve_models(args, os.path.abspath(args.models_dir or
                                                  os.path.join(build_dir, "bench-models")))
    log(f"models: {models['kind']}: {models['mor']} / {models['vanilla']} / {models['rs']}; "
        f"prompts: {models['dataset']}")
    bench = ServeBench(args, models, build_dir, out_dir)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    try:
        bench.calibrate()
        for name in ("batching", "rates", "depth", "static", "kv", "overhead"):
            if name in sections:
                log(f"section {name} ({time.monotonic() - t0:.0f} s so far)")
                getattr(bench, f"section_{name}")()
    finally:
        bench.stop()
    total = time.monotonic() - t0
    argv_shown = list(sys.argv[1:] if argv is None else argv)
    if argv_shown[:2] == ["--build-dir", os.path.join(ROOT, "build", "release")]:
        argv_shown = argv_shown[2:]
    command = " ".join(["./mor bench serve", *map(shlex.quote, argv_shown)])
    text = report(bench, command, total)
    images = plots(bench)
    if images:
        text += "\n\nPlots: " + ", ".join(f"`{os.path.join(out_dir, i)}`" for i in images)
    with open(os.path.join(out_dir, "serve.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "serve.json"), "w") as f:
        json.dump({"command": command, "machine": machine_info(args.threads), "args": vars(args),
                   "models": models, "num_prompts": bench.num_prompts,
                   "saturation_rate": bench.sat_rate, "runs": bench.runs,
                   "engine": bench.engine_records, "skipped": bench.skipped,
                   "total_seconds": total}, f, indent=1)
    print(text)
    log(f"wrote {out_dir}/serve.md, serve.json{', ' + ', '.join(images) if images else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
