#!/usr/bin/env python3
"""Renders panels of the Grafana dashboard into a PNG, from Prometheus.

The panels of deploy/grafana/dashboards/mor-serving.json are drawn from a
Prometheus server's query_range API with matplotlib, so per-depth compute can
be seen without Grafana.

    render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 30 --out mor.png
    render_dashboard.py --demo --server-binary build/release/server/mor_server --out mor.png

The panels' PromQL comes from the dashboard JSON ($__rate_interval and
$instance substituted), so the picture and Grafana show the same queries.
--demo runs a local stack first (tools/metrics/mor_stack.py): mor_server with a
small random MoR model, Prometheus on 127.0.0.1 with temporary storage, and
three phases of mixed-depth load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mor_stack  # noqa: E402

# The per-depth panels, by title.
DEFAULT_PANELS = [
    "Token-recursion steps/s by depth",
    "Estimated FLOPs/s by depth",
    "Share of tokens exiting at each depth (adaptive)",
    "Shared-block batch occupancy per depth",
    "KV blocks used per depth",
    "Requests/s by recursion policy",
]

UNITS = {"flops": "FLOP/s", "bytes": "B", "s": "s", "reqps": "req/s", "ops": "/s"}


def load_panels(path: str = mor_stack.DASHBOARD) -> dict:
    """Title -> panel of every timeseries panel in the dashboard JSON."""
    with open(path) as f:
        dashboard = json.load(f)
    panels = {}
    for panel in dashboard["panels"]:
        for p in [panel] + panel.get("panels", []):
            if p.get("type") == "timeseries":
                panels[p["title"]] = p
    return panels


def substitute(expr: str, rate_interval: str, instance: str) -> str:
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("${instance}", instance).replace("$instance", instance))


def legend(fmt: str, labels: dict) -> str:
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def depth_key(name: str):
    numbers = re.findall(r"\d+", name)
    return (0, int(numbers[0]), name) if numbers else (1, 0, name)


def render(prom: mor_stack.PrometheusClient, start: float, end: float, out: str, titles=None,
           rate_interval: str = "1m", instance: str = ".*", step: float | None = None,
           title: str | None = None) -> list[str]:
    """Writes the PNG; returns the panel titles that had no data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, PercentFormatter

    panels = load_panels()
    titles = titles or DEFAULT_PANELS
    missing = [t for t in titles if t not in panels]
    if missing:
        raise SystemExit(f"no such panels in {mor_stack.DASHBOARD}: {missing}")
    step = step or max(1.0, (end - start) / 300)
    cols = 2
    rows = math.ceil(len(titles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.6 * rows), squeeze=False)
    empty = []
    for ax, panel_title in zip(axes.flat, titles):
        panel = panels[panel_title]
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
        has_data = False
        for index, target in enumerate(panel["targets"]):
            expr = substitute(target["expr"], rate_interval, instance)
            series = []
            for result in prom.query_range(expr, start, end, step):
                xs = [(float(t) - start) / 60 for t, _ in result["values"]]
                ys = [float(v) for _, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), xs, ys))
            series.sort(key=lambda s: depth_key(s[0]))
            if series:
                has_data = True
            # The first target is stacked when the panel stacks; the others
            # (e.g. a capacity line) are drawn as lines.
            if stacked and index == 0 and series:
                grid = sorted({x for _, xs, _ in series for x in xs})
                stacks = []
                for _, xs, ys in series:
                    values = dict(zip(xs, ys))
                    stacks.append([0.0 if math.isnan(values.get(x, 0.0)) else values.get(x, 0.0)
                                   for x in grid])
                ax.stackplot(grid, stacks, labels=[s[0] for s in series], alpha=0.8)
            else:
                for name, xs, ys in series:
                    ax.plot(xs, ys, label=name, linewidth=1.5,
                            linestyle="--" if index > 0 and stacked else "-")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if unit == "percentunit":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        elif unit in UNITS:
            ax.yaxis.set_major_formatter(EngFormatter(unit=UNITS[unit]))
        if has_data:
            ax.legend(fontsize=7, loc="upper left")
        else:
            empty.append(panel_title)
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(titles):]:
        ax.set_visible(False)
    fig.suptitle(title or "MoR serving: per-depth compute", fontsize=12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return empty


def demo(args) -> int:
    """Local stack + three load phases, then render the whole run."""
    work = tempfile.mkdtemp(prefix="mor-dashboard-")
    server = prometheus = None
    try:
        model = mor_stack.make_model(os.path.join(work, "model"), hidden_size=128)
        # A small KV cache (blocks per pool), so that its use per depth shows.
        server = mor_stack.Server(args.server_binary, model, os.path.join(work, "server.log"),
                                  ["--kv_blocks", str(args.kv_blocks)])
        prometheus = mor_stack.Prometheus(os.path.join(work, "prometheus"),
                                          [server.metrics_target], scrape_interval="1s")
        prometheus.wait_until('up{job="mor-server"}', lambda r: r and r[0]["value"][1] == "1")
        start = time.time()
        phases = [("adaptive only", [0], 4), ("fixed depths 1 and 2", [1, 2], 8),
                  ("adaptive and every depth", [0, 1, 2, 3], 8)]
        for i, (name, policies, concurrency) in enumerate(phases):
            print(f"demo: phase {i + 1}: {name} ({args.phase_seconds:g} s)", file=sys.stderr)
            phase_end = time.monotonic() + args.phase_seconds
            for batch in range(1000):  # bounded; each batch is short
                if time.monotonic() >= phase_end:
                    break
                mor_stack.drive_load(server.address, num_requests=2 * concurrency,
                                     concurrency=concurrency, seed=100 * i + batch,
                                     max_seconds=phase_end - time.monotonic(),
                                     policies=policies, max_tokens=(16, 64))
        time.sleep(3)  # one more scrape
        end = time.time()
        empty = render(prometheus, start, end, args.out, rate_interval=args.rate_interval,
                       title="MoR serving: per-depth compute (local demo: random model, "
                             "3 load phases)")
        print(f"demo: wrote {args.out}" + (f" (no data: {empty})" if empty else ""),
              file=sys.stderr)
        return 1 if empty else 0
    finally:
        if prometheus:
            prometheus.stop()
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090",
                        help="Prometheus base URL (one that scrapes mor_server)")
    parser.add_argument("--minutes", type=float, default=30, help="time range, ending now")
    parser.add_argument("--rate-interval", default=None,
                        help="range of rate() (Grafana's $__rate_interval); default 1m, "
                             "10s with --demo")
    parser.add_argument("--instance", default=".*", help="instance label regex")
    parser.add_argument("--panels", default=None,
                        help="comma-separated panel titles (default: the per-depth panels)")
    parser.add_argument("--out", default="mor-dashboard.png")
    parser.add_argument("--demo", action="store_true",
                        help="run a local server + Prometheus + load first")
    parser.add_argument("--server-binary", default=None, help="mor_server (for --demo)")
    parser.add_argument("--phase-seconds", type=float, default=25, help="--demo: per phase")
    parser.add_argument("--kv-blocks", type=int, default=160, help="--demo: KV blocks per pool")
    args = parser.parse_args(argv)
    if args.demo:
        args.rate_interval = args.rate_interval or "10s"
        if not args.server_binary:
            parser.error("--demo needs --server-binary")
        return demo(args)
    args.rate_interval = args.rate_interval or "1m"
    prom = mor_stack.PrometheusClient(args.prometheus)
    end = time.time()
    titles = [t.strip() for t in args.panels.split(",")] if args.panels else None
    empty = render(prom, end - 60 * args.minutes, end, args.out, titles, args.rate_interval,
                   args.instance)
    print(f"wrote {args.out}" + (f" (no data: {empty})" if empty else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
