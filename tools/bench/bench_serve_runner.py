"""The serving benchmark's runs (tools/bench/bench_serve.py is the CLI): the
server configurations, one mor_server per configuration, mor_loadgen load runs
and the in-process engine run, and the selectors the report reads them with."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine as be  # noqa: E402
from bench_common import (MorServerProcess, fmt_spread, loadavg, lookup,  # noqa: E402
                          median_spread, rotate)

MT = be.MODE_TITLES
CONFIGS = {  # key -> (title, model role, server flags)
    "cdw": (MT["continuous_depthwise"], "mor", ["--batching_mode", "continuous_depthwise"]),
    "dg": (MT["depth_grouped"], "mor", ["--batching_mode", "depth_grouped"]),
    "nda": (MT["no_depth_awareness"], "mor", ["--batching_mode", "no_depth_awareness"]),
    "van": (MT["vanilla"], "vanilla", ["--batching_mode", "depth_grouped"]),
    "static": ("depth-wise, static batching", "mor",
               ["--batching_mode", "continuous_depthwise", "--static_batching"]),
    "rs": ("depth-wise, recursive KV sharing", "rs", ["--batching_mode", "continuous_depthwise"]),
}


def log(msg: str) -> None:
    print(f"bench_serve: {msg}", file=sys.stderr, flush=True)


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
