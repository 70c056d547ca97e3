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

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine as be  # noqa: E402
from bench_common import (MorServerProcess, fmt_spread, loadavg, lookup,  # noqa: E402
                          machine_info, md_table, median_spread, rotate)

ROOT = be.ROOT
CONFIGS = {  # key -> (title, model role, server flags)
    "cdw": ("depth-wise (continuous)", "mor", ["--batching_mode", "continuous_depthwise"]),
    "dg": ("depth-grouped", "mor", ["--batching_mode", "depth_grouped"]),
    "nda": ("no depth awareness", "mor", ["--batching_mode", "no_depth_awareness"]),
    "van": ("vanilla", "vanilla", ["--batching_mode", "depth_grouped"]),
    "static": ("depth-wise, static batching", "mor",
               ["--batching_mode", "continuous_depthwise", "--static_batching"]),
    "rs": ("depth-wise, recursive KV sharing", "rs", ["--batching_mode", "continuous_depthwise"]),
}
QUICK_DIMS = dict(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256,
                  vocab_size=512, max_position_embeddings=512, disk_dtype="bfloat16")


def log(msg: str) -> None:
    print(f"bench_serve: {msg}", file=sys.stderr, flush=True)


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
# The benchmark
# ----------------------------------------------------------------------------

def shown(path: str) -> str:
    """A path relative to the repository when it is inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


class ServeBench:
    def __init__(self, args, models: dict, build_dir: str, out_dir: str):
        self.args, self.models, self.out_dir = args, models, out_dir
        self.server_bin = os.path.join(build_dir, "server", "mor_server")
        self.loadgen_bin = os.path.join(build_dir, "bench", "loadgen", "mor_loadgen")
        self.engine_bin = os.path.join(build_dir, "bench", "mor_bench_engine")
        for b in (self.server_bin, self.loadgen_bin, self.engine_bin):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"bench_serve: {b} not found: build it first "
                                 "(./mor build mor_server mor_loadgen mor_bench_engine)")
        self.logs = os.path.join(out_dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.servers: dict[str, MorServerProcess] = {}
        self.runs: list[dict] = []
        self.engine_records: list[dict] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []
        self.start = time.monotonic()
        self.deadline = self.start + args.time_limit
        nr = models["nr"]
        self.mix = ":".join(str(d) for d in range(1, nr + 1))
        self.n = args.concurrency
        self.num_prompts = args.num_prompts or 2 * self.n
        self.sat_rate = None
        self.static_rate = None

    # -- processes ------------------------------------------------------------

    def server(self, key: str) -> MorServerProcess:
        if key not in self.servers:
            title, role, flags = CONFIGS[key]
            flags = flags + ["--dtype", self.args.dtype, "--threads", str(self.args.threads),
                             "--device", self.args.device,
                             "--kv_cache_bytes", str(self.args.kv_cache_mib << 20),
                             "--max_queued_requests", "100000"]
            if self.models["tokenizer"] and self.models["dataset"] != "random":
                flags += ["--tokenizer", self.models["tokenizer"]]
            srv = MorServerProcess(key, self.server_bin, self.models[role], flags,
                         os.path.join(self.logs, f"server-{key}.log"))
            srv.start()
            self.servers[key] = srv
        return self.servers[key]

    def stop(self, *keys: str) -> None:
        for key in keys or list(self.servers):
            srv = self.servers.pop(key, None)
            if srv:
                srv.stop()

    def out_of_time(self, what: str) -> bool:
        if time.monotonic() < self.deadline:
            return False
        self.skipped.append(what)
        if len(self.skipped) == 1:
            log(f"--time-limit {self.args.time_limit:.0f} s reached: skipping the remaining runs")
        return True

    # -- one load run ---------------------------------------------------------

    def load(self, key: str, *, section: str, policy: str, rep: int = 0, rate: str = "inf",
             concurrency: int = 0, num_prompts: int | None = None, output_range: float = 0.0,
             goodput: str = "", sample_kv: bool = True) -> dict | None:
        label = f"{section}/{key}/{policy}/rate={rate}/rep{rep}"
        if self.out_of_time(label):
            return None
        srv = self.server(key)
        pol = self.mix if policy == "mix" else policy
        n_prompts = num_prompts or self.num_prompts
        json_path = os.path.join(self.logs, re.sub(r"[^A-Za-z0-9_.=-]+", "_", label) + ".json")
        cmd = [self.loadgen_bin, "--address", srv.address, "--metrics_address", srv.metrics,
               "--num_prompts", str(n_prompts), "--request_rate", str(rate),
               "--max_concurrency", str(concurrency), "--policy", pol,
               "--input_len", str(self.args.input_len), "--output_len", str(self.args.output_len),
               "--output_range_ratio", str(output_range), "--dataset", self.models["dataset"],
               "--seed", str(self.args.seed), "--label", label, "--quiet",
               "--max_duration", f"{self.args.run_timeout}s", "--json_out", json_path,
               "--metrics_interval", f"{self.args.kv_sample_ms}ms" if sample_kv else "0s"]
        if goodput:
            cmd += ["--goodput", goodput]
        if not srv.warm:
            cmd += ["--warmup_requests", str(max(1, min(self.n, 64)))]
            srv.warm = True
        load_before = loadavg()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=self.args.run_timeout + 300)
        except subprocess.TimeoutExpired:
            self.notes.append(f"run {label}: mor_loadgen did not return in time")
            return None
        secs = time.monotonic() - t0
        if proc.returncode != 0 or not os.path.exists(json_path):
            log(f"[{label}] mor_loadgen failed (exit {proc.returncode}): {proc.stderr.strip()}")
            self.notes.append(f"run {label} failed: {proc.stderr.strip()[-300:]}")
            return None
        with open(json_path) as f:
            report = json.load(f)
        run = {"section": section, "config": key, "policy": policy, "rate": rate, "rep": rep,
               "wall_seconds": secs, "load_before": load_before, "report": report}
        self.runs.append(run)
        log(f"[{label}] {report['completed']} ok / {report['failed']} failed, "
            f"{report['output_throughput']:.1f} tok/s, TTFT p99 {report['ttft_ms']['p99']:.0f} ms, "
            f"TPOT p50 {report['tpot_ms']['median']:.1f} ms, client CPU "
            f"{report['client']['cpu_percent_of_one_core']:.1f}%  ({secs:.1f} s)")
        return report

    # A selector is (section, config, policy[, rate]); rate defaults to "inf".

    def select(self, sel: tuple) -> list[dict]:
        section, config, policy, rate = (*sel, "inf")[:4]
        return [r for r in self.runs if (r["section"], r["config"], r["policy"], r["rate"]) ==
                (section, config, policy, rate)]

    def stats(self, sel: tuple, path: str):
        """(median, min, max) of a report value over the repeats."""
        return median_spread(lookup(r["report"], path) for r in self.select(sel))

    def cell(self, sel: tuple, path: str, digits: int = 1) -> str:
        return fmt_spread(self.stats(sel, path), digits)

    def ratio(self, a: tuple, b: tuple, path: str = "output_throughput"):
        """Per-repeat ratio of run a to run b (same repeat index), median and spread."""
        ra = {r["rep"]: lookup(r["report"], path) for r in self.select(a)}
        rb = {r["rep"]: lookup(r["report"], path) for r in self.select(b)}
        return median_spread(ra[k] / rb[k] for k in ra if k in rb and ra[k] and rb[k])

    def rates(self) -> list[str]:
        """The Poisson rates of the sweep, ascending."""
        return sorted({r["rate"] for r in self.runs if r["section"] == "rates"}, key=float)

    # -- sections -------------------------------------------------------------

    def calibrate(self) -> None:
        """Sizes the saturation runs: about --target-seconds on the fastest configuration."""
        if self.args.num_prompts:
            return
        rep = self.load("cdw", section="calibrate", policy="adaptive", concurrency=self.n,
                        num_prompts=2 * self.n)
        if rep and rep["request_throughput"] > 0:
            rounds = math.ceil(rep["request_throughput"] * self.args.target_seconds / self.n)
            self.num_prompts = self.n * max(2, min(self.args.max_rounds, rounds))
        log(f"saturation runs: {self.num_prompts} requests, {self.n} in flight")

    def section_batching(self) -> None:
        for rep in range(self.args.repeats):
            for key in rotate(["cdw", "dg", "nda", "van"], rep):
                for pol in (["adaptive"] if key == "van" else ["adaptive", "mix"]):
                    self.load(key, section="batching", policy=pol, rep=rep, concurrency=self.n)
        sat = self.stats(("batching", "cdw", "adaptive"), "request_throughput")
        self.sat_rate = sat[0] if sat else None

    def section_rates(self) -> None:
        if not self.sat_rate:
            return
        for frac in self.args.rate_fractions:
            rate = f"{frac * self.sat_rate:.3g}"
            n = max(8, int(float(rate) * self.args.sweep_seconds))
            for key in ("cdw", "dg", "van"):
                self.load(key, section="rates", policy="adaptive", rate=rate, num_prompts=n,
                          goodput=f"ttft:{self.args.slo_ttft_ms}", sample_kv=False)
        self.stop("dg", "nda", "van")

    def section_depth(self) -> None:
        for rep in range(self.args.repeats):
            for d in rotate(list(range(1, self.models["nr"] + 1)), rep):
                self.load("cdw", section="batching", policy=str(d), rep=rep, concurrency=self.n)

    def section_static(self) -> None:
        if not self.sat_rate:
            return
        rate = f"{self.args.static_rate_fraction * self.sat_rate:.3g}"
        n = max(2 * self.n, int(float(rate) * self.args.static_seconds))
        for rep in range(self.args.repeats):
            for key in rotate(["cdw", "static"], rep):
                self.load(key, section="static", policy="adaptive", rep=rep, rate=rate,
                          num_prompts=n, output_range=self.args.static_output_range,
                          goodput=f"ttft:{self.args.slo_ttft_ms}", sample_kv=False)
        self.static_rate = rate
        self.stop("static")

    def section_kv(self) -> None:
        for rep in range(self.args.repeats):
            for pol in ("adaptive", "mix"):
                self.load("rs", section="batching", policy=pol, rep=rep, concurrency=self.n)
        self.stop("rs")

    def section_overhead(self) -> None:
        self.stop()  # nothing else on the machine while the engine runs in-process
        if self.out_of_time("overhead/engine"):
            return
        rounds = max(1, self.num_prompts // self.n)
        cmd = [self.engine_bin, "--model_dir", self.models["mor"],
               "--modes", "continuous_depthwise", "--policy", "adaptive,mix",
               "--concurrency", str(self.n), "--rounds", str(rounds),
               "--prompt_len", str(self.args.input_len), "--output_len", str(self.args.output_len),
               "--repeats", str(self.args.repeats), "--dtype", self.args.dtype,
               "--device", self.args.device, "--threads", str(self.args.threads), "--json",
               "--label", "overhead"]
        try:
            records, secs = be.run_json(cmd, "engine, in-process", False)
        except SystemExit as e:
            self.notes.append(f"the in-process engine benchmark failed: {e}")
            return
        self.engine_records = records
        log(f"engine benchmark: {len(records)} configurations in {secs:.0f} s")


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def depth_list(values, percent: bool = True) -> str:
    if not values:
        return "-"
    return "/".join(f"{100 * v:.0f}%" if percent else f"{v:.1f}" for v in values)


def first_report(b: ServeBench, sel: tuple) -> dict | None:
    runs = b.select(sel)
    return runs[0]["report"] if runs else None


def x(stats) -> str:
    return "-" if stats is None else fmt_spread(stats, 2) + "x"


LATENCY_HEAD = ["TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms"]


def latency_cells(b: ServeBench, sel: tuple) -> list[str]:
    return [b.cell(sel, p) for p in ("ttft_ms.median", "ttft_ms.p99", "tpot_ms.median",
                                     "tpot_ms.p99")]


def policy_name(b: ServeBench, pol: str) -> str:
    return {"mix": f"mix {b.mix}"}.get(pol, f"depth {pol}" if pol.isdigit() else pol)


def batching_table(b: ServeBench) -> str:
    nr = b.models["nr"]
    pairs = [(pol, key) for pol in ("adaptive", "mix") for key in ("van", "cdw", "dg", "nda", "rs")
             if not (key == "van" and pol == "mix")]
    rows = []
    for pol, key in pairs + [(str(d), "cdw") for d in range(1, nr + 1)]:
        sel, grouped = ("batching", key, pol), ("batching", "dg", pol)
        rep = first_report(b, sel)
        if not rep:
            continue
        van = key == "van"
        rows.append([
            "-" if van else policy_name(b, pol), CONFIGS[key][0], b.cell(sel, "output_throughput"),
            "-" if van else x(b.ratio(sel, ("batching", "van", "adaptive"))),
            x(b.ratio(sel, grouped)) if key in ("cdw", "nda", "rs") and b.select(grouped) else "-",
            *latency_cells(b, sel),
            "-" if van else depth_list(rep["compute"].get("compute_share")),
            depth_list(lookup(rep, "server.rows_per_block_call_at_depth"), False),
            b.cell(sel, "client.cpu_percent_of_one_core"), str(len(b.select(sel)))])
    return md_table(["policy", "server", "output tok/s", "x vanilla", "x depth-grouped",
                     *LATENCY_HEAD, f"compute share depth {'/'.join(map(str, range(1, nr + 1)))}",
                     "rows / block call at depth", "client CPU %", "runs"], rows)


def depth_table(b: ServeBench) -> str:
    rows = []
    base = ("batching", "cdw", "1")
    for p in ["adaptive"] + [str(i) for i in range(1, b.models["nr"] + 1)]:
        sel = ("batching", "cdw", p)
        flops = b.stats(sel, "compute.estimated_flops_per_output_token")
        if not b.select(sel):
            continue
        rows.append([policy_name(b, p), b.cell(sel, "output_throughput"),
                     x(b.ratio(sel, base)) if b.select(base) else "-", *latency_cells(b, sel),
                     f"{flops[0] / 1e9:.4f}" if flops else "-",
                     b.cell(sel, "compute.mean_output_depth", 2)])
    return md_table(["policy", "output tok/s", "x depth 1", *LATENCY_HEAD,
                     "block GFLOPs / output token", "mean depth of generated tokens"], rows, left=1)


def rates_table(b: ServeBench) -> str:
    rows = []
    for rate in b.rates() + ["inf"]:
        for key in ("cdw", "dg", "van"):
            sel = ("rates" if rate != "inf" else "batching", key, "adaptive", rate)
            if b.select(sel):
                rows.append([rate, CONFIGS[key][0], b.cell(sel, "request_throughput", 2),
                             b.cell(sel, "output_throughput"), *latency_cells(b, sel),
                             b.cell(sel, "goodput.request_goodput", 2)])
    return md_table(["request rate (req/s)", "server", "req/s", "output tok/s", *LATENCY_HEAD,
                     f"goodput (TTFT <= {b.args.slo_ttft_ms} ms, req/s)"], rows)


def static_table(b: ServeBench) -> tuple[str, tuple | None]:
    rate = b.static_rate
    if not rate:
        return "(not run)", None
    rows = []
    for key in ("cdw", "static"):
        sel = ("static", key, "adaptive", rate)
        if b.select(sel):
            rows.append([CONFIGS[key][0], rate, b.cell(sel, "output_throughput"),
                         b.cell(sel, "goodput.request_goodput", 2),
                         b.cell(sel, "goodput.good_fraction", 2), *latency_cells(b, sel),
                         str(len(b.select(sel)))])
    cont, stat = ("static", "cdw", "adaptive", rate), ("static", "static", "adaptive", rate)
    good = b.ratio(cont, stat, "goodput.request_goodput")
    text = md_table(["server", "Poisson rate (req/s)", "output tok/s",
                     f"goodput (TTFT <= {b.args.slo_ttft_ms} ms, req/s)", "share within SLO",
                     *LATENCY_HEAD, "runs"], rows)
    text += (f"\n\nContinuous / static: goodput {x(good)}, output tok/s "
             f"{x(b.ratio(cont, stat))} (per-repeat ratios).")
    return text, good


def overhead_table(b: ServeBench) -> tuple[str, dict]:
    rows, ratios = [], {}
    for rec in b.engine_records:
        pol = rec["policy"]
        walls = rec.get("repeat_seconds") or [rec["seconds"]]
        eng = median_spread(rec["output_tokens"] / w for w in walls if w > 0)
        sel = ("batching", "cdw", pol)
        srv = b.stats(sel, "output_throughput")
        if not eng or not srv:
            continue
        ratios[pol] = srv[0] / eng[0]
        rows.append([policy_name(b, pol), str(rec["n"]), fmt_spread(eng), fmt_spread(srv),
                     f"{ratios[pol]:.3f}", f"{100 * (1 - ratios[pol]):+.1f}%",
                     b.cell(sel, "client.cpu_percent_of_one_core"),
                     f"{100 * rec['cpu_seconds'] / max(1e-9, rec['seconds']):.0f}"])
    return md_table(["policy", "N", "engine in-process tok/s", "mor_server tok/s (client)",
                     "server / engine", "overhead", "client CPU %", "engine CPU %"], rows), ratios


def kv_table(b: ServeBench) -> str:
    rows = []
    budget = b.args.kv_budget_mib << 20
    ctx = b.args.input_len + b.args.output_len
    van = b.stats(("batching", "van", "adaptive"), "kv.bytes_per_cached_token")
    kinds = {"van": "vanilla", "cdw": "MoR recursion-wise", "rs": "MoR recursive sharing"}
    for key, pol in (("van", "adaptive"), ("cdw", "adaptive"), ("cdw", "mix"), ("rs", "adaptive"),
                     ("rs", "mix")):
        sel = ("batching", key, pol)
        bpt = b.stats(sel, "kv.bytes_per_cached_token")
        if not bpt or not bpt[0]:
            continue
        peak = b.stats(sel, "kv.peak_used_bytes")
        rows.append([kinds[key], "-" if key == "van" else policy_name(b, pol),
                     f"{bpt[0] / 1024:.1f} KiB", f"{bpt[0] / van[0]:.3f}" if van and van[0] else "-",
                     f"{(peak[0] if peak else 0) / 2**20:.1f} MiB",
                     str(int(budget // (bpt[0] * ctx))), b.cell(sel, "server.preemptions", 0),
                     b.cell(sel, "output_throughput")])
    return md_table(["model", "policy", "KV / cached token", "x vanilla", "peak KV held",
                     f"largest batch in {b.args.kv_budget_mib} MiB at {ctx} tokens",
                     "preemptions", "output tok/s"], rows)


def stage_table(b: ServeBench) -> str:
    rows = []
    stages = ["schedule", "enter", "block", "exit", "sample"]
    for key, pol in (("van", "adaptive"), ("cdw", "adaptive"), ("dg", "adaptive"),
                     ("nda", "adaptive"), ("cdw", "mix"), ("dg", "mix")):
        sel = ("batching", key, pol)
        wall = b.stats(sel, "output_throughput")
        if not wall:
            continue
        rows.append([CONFIGS[key][0], "-" if key == "van" else pol, f"{1e3 / wall[0]:.3f}",
                     b.cell(sel, "server.step_ms_per_output_token", 3),
                     *[b.cell(sel, f"server.stage_ms_per_output_token.{s}", 3) for s in stages],
                     b.cell(sel, "server.busy_fraction", 2),
                     b.cell(sel, "server.mean_iteration_tokens")])
    return md_table(["server", "policy", "wall ms / token", "engine step ms / token",
                     *[f"{s} ms" for s in stages], "busy fraction", "tokens / step"], rows)


def verdict(value: float, goal: float) -> str:
    return "met." if value >= goal else f"missed by {100 * (1 - value / goal):.0f}%."


def goal_lines(b: ServeBench, static_good, overhead: dict) -> list[str]:
    out = []
    r = b.ratio(("batching", "cdw", "adaptive"), ("batching", "van", "adaptive"))
    if r:
        out.append("* Continuous depth-wise >= 2.1x vanilla output tok/s at saturation "
                   f"(adaptive): **{r[0]:.2f}x** - {verdict(r[0], 2.1)}")
    r = b.ratio(("batching", "cdw", "mix"), ("batching", "dg", "mix"))
    if r:
        out.append(f"* Ahead of depth-grouped with mixed depths ({b.mix}): **{r[0]:.2f}x** - "
                   + ("met." if r[0] > 1 else f"missed by {100 * (1 - r[0]):.0f}%."))
    if static_good:
        out.append(f"* Continuous >= 3x static batching (goodput, TTFT <= {b.args.slo_ttft_ms} "
                   f"ms): **{static_good[0]:.2f}x** - {verdict(static_good[0], 3)}")
    for pol, ratio in overhead.items():
        ov = 1 - ratio
        note = ("met." if ov <= 0.05 else f"missed by {100 * ov - 5:.1f} points.")
        if ov < -0.05:
            note += (" (The server beat the in-process engine by more than noise: the machine "
                     "was not quiet during one of them; compare their CPU %.)")
        out.append(f"* Server overhead <= 5% ({policy_name(b, pol)}): **{100 * ov:.1f}%** - "
                   + note)
    return out


LEVERS = {  # what would make the dominant engine stage faster
    "block": "the shared block (GEMMs + paged attention): faster kernels or fuller block calls",
    "exit": "the exit (last unique layer + LM head) runs once per step on the rows that leave: "
            "batching exits across steps would cut it",
    "enter": "the entry (embedding + first unique layer) runs per step on the rows that enter",
    "sample": "sampling: fused / batched top-k on the logits",
    "schedule": "the scheduler's per-step bookkeeping",
}


def reading(b: ServeBench) -> list[str]:
    """Where the time goes (server stage metrics) and whether the client kept up."""
    out = []
    for key, pol in (("cdw", "adaptive"), ("van", "adaptive")):
        rep = first_report(b, ("batching", key, pol))
        if not rep or not rep.get("server"):
            continue
        st = rep["server"]["stage_ms_per_output_token"]
        total = sum(st.values()) or 1
        order = sorted(st.items(), key=lambda kv: -kv[1])
        parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in order)
        out.append(f"* {CONFIGS[key][0]} ({pol}): engine step time by stage {parts}; the engine "
                   f"was busy {100 * rep['server']['busy_fraction']:.0f}% of the run (the rest: "
                   "gRPC, queueing, client gaps)."
                   + (f" Largest lever: {LEVERS.get(order[0][0], order[0][0])}." if key == "cdw"
                      else ""))
    cpu = median_spread(r["report"]["client"]["cpu_percent_of_one_core"] for r in b.runs)
    if cpu:
        verdict = ("the load generator is not the bottleneck" if cpu[2] < 25 else
                   "the client used a noticeable share of the CPU the server shares")
        out.append(f"* Client CPU over all runs: median {cpu[0]:.1f}% of one core (max "
                   f"{cpu[2]:.1f}%): {verdict}.")
    return out


def plots(b: ServeBench) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not available: no plots")
        return []
    files = []
    rates = b.rates()
    if rates:
        inf_x = float(rates[-1]) * 1.25
        fig, ax = plt.subplots(figsize=(6.5, 4))
        fig2, axes = plt.subplots(2, 2, figsize=(10, 7))
        for key in ("cdw", "dg", "van"):
            xs, ys, lat = [], [], {p: [] for p in ("ttft_ms.median", "ttft_ms.p99",
                                                  "tpot_ms.median", "tpot_ms.p99")}
            for rate in rates + ["inf"]:
                sel = ("rates" if rate != "inf" else "batching", key, "adaptive", rate)
                tput = b.stats(sel, "output_throughput")
                if not tput:
                    continue
                xs.append(inf_x if rate == "inf" else float(rate))
                ys.append(tput[0])
                for p in lat:
                    v = b.stats(sel, p)
                    lat[p].append(v[0] if v else float("nan"))
            ax.plot(xs, ys, marker="o", label=CONFIGS[key][0])
            for a, p in zip(axes.flat, lat):
                a.plot(xs, lat[p], marker="o", label=CONFIGS[key][0])
                name, pct = p.split("_ms.")
                a.set_title(f"{name.upper()} {'p50' if pct == 'median' else pct} (ms)")
                a.set_yscale("log")
                a.set_xlabel("request rate (req/s)")
        ticks = [float(r) for r in rates] + [inf_x]
        labels = rates + [f"inf\n({b.n} in flight)"]
        for a in [ax, *axes.flat]:
            a.set_xticks(ticks, labels, fontsize=8)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel("output tokens/s")
        ax.set_title("Throughput vs request rate (adaptive routing)")
        ax.grid(alpha=0.3)
        ax.legend()
        axes.flat[0].legend(fontsize=8)
        fig.tight_layout()
        fig2.tight_layout()
        for f, name in ((fig, "throughput_vs_rate.png"), (fig2, "latency_vs_rate.png")):
            f.savefig(os.path.join(b.out_dir, name), dpi=110)
            files.append(name)
        plt.close("all")
    bars = []
    for key, pol in (("cdw", "adaptive"), ("dg", "adaptive"), ("cdw", "mix"), ("rs", "adaptive"),
                     *[("cdw", str(d)) for d in range(1, b.models["nr"] + 1)]):
        rep = first_report(b, ("batching", key, pol))
        if rep and rep["compute"].get("compute_share"):
            bars.append((f"{key}\n{pol}", rep["compute"]["compute_share"]))
    if bars:
        fig, ax = plt.subplots(figsize=(7, 4))
        bottom = [0.0] * len(bars)
        for d in range(b.models["nr"]):
            vals = [s[d] if d < len(s) else 0 for _, s in bars]
            ax.bar([n for n, _ in bars], vals, bottom=bottom, label=f"depth {d + 1}")
            bottom = [p + v for p, v in zip(bottom, vals)]
        ax.set_ylabel("share of token-recursion steps")
        ax.set_title("Per-depth compute (final usage messages)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(b.out_dir, "depth_compute.png"), dpi=110)
        plt.close(fig)
        files.append("depth_compute.png")
    return files


def report(b: ServeBench, command: str, total: float) -> str:
    a, m = b.args, b.models
    info = machine_info(a.threads)
    static_text, static_good = static_table(b)
    over_text, over = overhead_table(b)
    d = m["dims"]
    lines = [
        f"Command: `{command}`",
        f"Machine: {info['cpu']} ({info['cores']} cores; {info['isa']}), server {a.threads} "
        f"intra-op threads, {a.device}, {a.dtype}, torch {info['torch']}, commit "
        f"{info['commit'] or '?'}, {info['date']}; load average {loadavg():.1f} at the end.",
        f"Models ({m['kind']}): MoR `{shown(m['mor'])}` (Nr = {m['nr']}, "
        f"L = {m['layers']}, B = {m['block']}, d {d['hidden_size']}, vocab {d['vocab_size']}); "
        f"vanilla `{shown(m['vanilla'])}` (same dims, L = {m['layers']}); "
        f"recursive sharing `{shown(m['rs'])}` (the MoR weights, "
        "kv_mode=recursive_sharing).",
        f"Workload: {a.input_len}-token prompts ({'windows of ' + m['dataset'] if m['dataset'] != 'random' else 'random token ids'}), "
        f"{a.output_len} output tokens (greedy, ignore_eos); saturation = {b.num_prompts} "
        f"requests with {b.n} in flight (rate inf); {a.repeats} interleaved repeats; server "
        f"KV budget {a.kv_cache_mib} MiB; policies: adaptive (the routers decide) and mix "
        f"{b.mix} (request i at fixed depth 1 + i mod Nr).",
        "",
        "### 1. Depth-wise batching at saturation",
        "",
        "Client-side output tok/s (median of repeats, min-max), ratios per repeat vs the vanilla "
        "and depth-grouped runs made next to it; compute share = token-recursion steps at each "
        "depth (final usage messages); rows / block call from the server's "
        "`mor_shared_block_batch_tokens`.",
        "",
        batching_table(b),
        "",
        "#### Throughput and latency vs Poisson request rate (adaptive)",
        "",
        rates_table(b),
        "",
        "### 2. Continuous vs static batching",
        "",
        f"Poisson arrivals at {a.static_rate_fraction:g} x the depth-wise saturation rate, output "
        f"lengths uniform in {a.output_len} x (1 +- {a.static_output_range:g}); goodput = requests "
        f"per second whose TTFT met {a.slo_ttft_ms} ms (vLLM's goodput).",
        "",
        static_text,
        "",
        "### 3. Test-time depth",
        "",
        "The depth-wise server at saturation, every request at one fixed depth vs adaptive "
        "routing; block GFLOPs = the server's estimate in the final usage (shared block only).",
        "",
        depth_table(b),
        "",
        "### 4. Server overhead",
        "",
        "mor_server (depth-wise) measured by the client vs the same engine in-process "
        f"(mor_bench_engine, {b.n} in flight, {b.num_prompts} requests, same dtype and threads, "
        "median of its repeats); the engine's own prompts are random token ids.",
        "",
        over_text,
        "",
        "### 5. KV memory",
        "",
        "Bytes held by the server's KV pools (`mor_kv_cache_used_bytes`, block-granular, sampled "
        f"every {a.kv_sample_ms} ms) / tokens whose K/V are cached (prompt + received tokens of the requests in "
        "flight, counted by the client); largest batch = budget / (bytes per token x context).",
        "",
        kv_table(b),
        "",
        "### Where the time goes (server /metrics, ms per output token)",
        "",
        stage_table(b),
        "",
        "### Goals",
        "",
        *goal_lines(b, static_good, over),
        *[ln for ln in reading(b) if ln],
        "",
    ]
    if b.skipped:
        lines.append(f"Skipped after --time-limit {a.time_limit:.0f} s: {len(b.skipped)} runs "
                     f"({', '.join(b.skipped[:5])}{', ...' if len(b.skipped) > 5 else ''}).")
    lines += [f"Note: {n}" for n in b.notes]
    lines.append(f"Runtime: {total:.0f} s ({len(b.runs)} load runs).")
    return "\n".join(lines)


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
