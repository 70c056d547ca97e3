#!/usr/bin/env python3
"""The metrics deployment end to end: mor_server (tiny random MoR model, /metrics
on 127.0.0.1) scraped every second by the real Prometheus server (Debian
package; 127.0.0.1, temporary storage) that loads deploy/prometheus/rules.
After a short load with mixed recursion depths (adaptive and every fixed
depth) plus a few invalid requests, it checks:

  * every PromQL expression of the Grafana dashboard and of the rules returns
    data through Prometheus's HTTP API (alerts: the signal left of the
    threshold; the alert expression itself must evaluate without error);
  * the per-depth step counters Prometheus scraped equal the sums of the
    token_steps_per_depth usage the RPCs returned, and so do the server's own
    /metrics; adaptive exit-depth counters equal the depths the streams carried;
  * ./mor dashboard's renderer writes a PNG from this Prometheus.

Usage: prometheus_stack_test.py MOR_SERVER_BINARY WORK_DIR
Prints one line per check and 'N passed, N failed'.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "metrics"))

import mor_stack  # noqa: E402
from deploy_common import Checks  # noqa: E402
import render_dashboard  # noqa: E402

NUM_RECURSIONS = 3
RATE_INTERVAL = "1m"
# `<signal> <op> <number>`, the form every alert expression has.
THRESHOLD = re.compile(r"^(?P<signal>.*?)\s*(==|!=|>=|<=|>|<)\s*-?[0-9.]+(e[+-]?[0-9]+)?\s*$",
                       re.DOTALL)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every target in the dashboard JSON."""
    with open(mor_stack.DASHBOARD) as f:
        dashboard = json.load(f)
    out = []
    for panel in dashboard["panels"]:
        for p in [panel] + panel.get("panels", []):
            for target in p.get("targets", []):
                out.append((p["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable.get("definition", ""))
        if match:  # the variable's values come from this selector's series
            out.append((f"variable {variable['name']}", match.group(1)))
    return out


def has_data(result: list) -> bool:
    return len(result) > 0


def run(binary: str, work_dir: str, checks: Checks) -> None:
    work = os.path.join(work_dir, "prometheus_stack")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model = mor_stack.make_model(os.path.join(work, "model"), NUM_RECURSIONS)
    server = mor_stack.Server(binary, model, os.path.join(work, "server.log"),
                              ["--kv_cache_bytes", str(64 << 20)])
    prometheus = None
    try:
        prometheus = mor_stack.Prometheus(os.path.join(work, "prometheus"),
                                          [server.metrics_target], scrape_interval="1s")
        prometheus.wait_until('up{job="mor-server"}',
                              lambda r: len(r) == 1 and r[0]["value"][1] == "1", timeout=60)
        start = time.time()
        results = mor_stack.drive_load(server.address, num_requests=40, concurrency=6, seed=7,
                                       max_seconds=90, num_recursions=NUM_RECURSIONS)
        mor_stack.invalid_requests(server.address, count=2)
        checks.check("load finished", len(results) == 40, f"{len(results)} of 40 requests")
        steps = [0] * NUM_RECURSIONS
        exits = [0] * NUM_RECURSIONS
        for r in results:
            for i, n in enumerate(r["usage"].token_steps_per_depth):
                steps[i] += n
            if r["policy"] == 0:
                for d in r["depths"]:
                    exits[d - 1] += 1
        checks.check("every depth computed", all(s > 0 for s in steps), f"steps {steps}")

        # Prometheus agrees with the RPCs once it has scraped after the load.
        def scraped(metric):
            result = prometheus.query(f"sum by (depth) ({metric})")
            return {int(s["metric"]["depth"]): float(s["value"][1]) for s in result}

        def agree(metric, want):
            return lambda _: scraped(metric) == {d + 1: float(n) for d, n in enumerate(want)}

        for metric, want in (("mor_recursion_token_steps_total", steps),
                             ("mor_adaptive_exit_tokens_total", exits)):
            try:
                prometheus.wait_until(metric, agree(metric, want), timeout=30)
                checks.check(f"{metric} in Prometheus equals the RPCs' usage", True)
            except TimeoutError:
                checks.check(f"{metric} in Prometheus equals the RPCs' usage", False,
                             f"scraped {scraped(metric)}, RPCs {want}")
        text = server.scrape()
        own = {int(m.group(1)): float(m.group(2)) for m in re.finditer(
            r'^mor_recursion_token_steps_total\{depth="(\d+)"\} (\S+)$', text, re.M)}
        checks.check("server /metrics step counters equal the RPCs' usage",
                     own == {d + 1: float(n) for d, n in enumerate(steps)},
                     f"/metrics {own}, RPCs {steps}")
        time.sleep(3)  # a few more scrapes and rule evaluations
        end = time.time()

        # Every dashboard expression returns data.
        exprs = dashboard_exprs()
        checks.check("dashboard has expressions", len(exprs) >= 20, f"{len(exprs)}")
        for title, expr in exprs:
            query = render_dashboard.substitute(expr, RATE_INTERVAL, ".*")
            try:
                ok = has_data(prometheus.query(query))
                checks.check(f"dashboard [{title}] {query}", ok, "no data")
            except RuntimeError as e:
                checks.check(f"dashboard [{title}] {query}", False, str(e))

        # Every rule Prometheus loaded: recording rules return data (their
        # expression and their recorded series); alerts evaluate, and their
        # signal returns data.
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        checks.check("rules loaded", len(groups) == 2 and len(rules) >= 8,
                     f"{len(groups)} groups, {len(rules)} rules")
        for rule in rules:
            checks.check(f"rule {rule['name']} healthy", rule.get("health") == "ok",
                         f"{rule.get('health')}: {rule.get('lastError')}")
            expr = rule["query"]
            try:
                if rule["type"] == "recording":
                    checks.check(f"recording {rule['name']}: {expr}",
                                 has_data(prometheus.query(expr)), "no data")
                    checks.check(f"recorded series {rule['name']}",
                                 has_data(prometheus.query(rule["name"])), "no data")
                else:
                    prometheus.query(expr)  # evaluates (empty: not firing)
                    match = THRESHOLD.match(expr)
                    if not match:
                        checks.check(f"alert {rule['name']} has the form signal op threshold",
                                     False, expr)
                        continue
                    signal = match.group("signal")
                    checks.check(f"alert {rule['name']} signal {signal}",
                                 has_data(prometheus.query(signal)), "no data")
            except RuntimeError as e:
                checks.check(f"rule {rule['name']}: {expr}", False, str(e))

        # The README's renderer works against this Prometheus.
        png = os.path.join(work, "dashboard.png")
        empty = render_dashboard.render(prometheus, start - 5, end, png, rate_interval="10s")
        checks.check("render_dashboard wrote a PNG with data in every panel",
                     os.path.getsize(png) > 20000 and not empty, f"no data: {empty}")
    finally:
        if prometheus is not None:
            prometheus.stop()
            shutil.rmtree(os.path.join(work, "prometheus", "data"), ignore_errors=True)
        code = server.stop()
        checks.check("mor_server stopped cleanly on SIGTERM", code == 0, f"exit code {code}")


def main() -> int:
    checks = Checks()
    try:
        run(sys.argv[1], sys.argv[2], checks)
    except Exception as e:  # noqa: BLE001 - report any failure as a failed check
        checks.check("harness", False, f"{type(e).__name__}: {e}")
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 and checks.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
