"""The serving benchmark's report (tools/bench/bench_serve.py is the CLI):
the markdown tables of serve.md, the goal lines and reading, and the PNG plots,
all from the runs a ServeBench (bench_serve_runner.py) recorded."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (ROOT, fmt_spread, loadavg, lookup, machine_info,  # noqa: E402
                          md_table, median_spread)
from bench_serve_runner import CONFIGS, ServeBench, log  # noqa: E402


def shown(path: str) -> str:
    """A path relative to the repository when it is inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


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
