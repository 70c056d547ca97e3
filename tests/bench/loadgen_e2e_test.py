#!/usr/bin/env python3
"""End to end: mor_loadgen against a real mor_server on 127.0.0.1 (ephemeral
ports) serving a tiny random MoR model; checks that the JSON report is sane.

Usage: loadgen_e2e_test.py MOR_SERVER MOR_LOADGEN WORK_DIR
Prints 'N passed, M failed'; exit code 0 when every check passed.

Checks: every request completes; token counts equal the requested lengths
(fixed and ranged output lengths); latency percentiles are ordered; the
per-policy split and the per-depth compute of the final usage messages match
the policy mix (fixed depth d spends nothing beyond depth d); the /metrics
deltas agree with the client's token counts; the client reports its CPU use;
a non-loopback address and out-of-bounds flags are refused; --max_duration
cancels what is still running.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))

from make_random_model import make_random_model  # noqa: E402

FAILURES: list[str] = []
PASSED = [0]


def check(cond: bool, what: str) -> None:
    if cond:
        PASSED[0] += 1
    else:
        FAILURES.append(what)
        print(f"FAILED: {what}")


def start_server(binary: str, model_dir: str, log_path: str) -> tuple:
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "--model_dir", model_dir, "--listen_address", "127.0.0.1:0",
         "--metrics_address", "127.0.0.1:0", "--kv_cache_bytes", str(32 << 20), "--threads", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        with open(log_path) as f:
            text = f.read()
        grpc = re.search(r"listening on (127\.0\.0\.1:\d+)", text)
        metrics = re.search(r"metrics on http://(127\.0\.0\.1:\d+)/metrics", text)
        if grpc and metrics:
            return proc, grpc.group(1), metrics.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {text}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start listening")


def loadgen(binary: str, work_dir: str, name: str, *flags: str) -> tuple[int, dict, str]:
    out = os.path.join(work_dir, f"loadgen_{name}.json")
    if os.path.exists(out):
        os.remove(out)
    proc = subprocess.run([binary, "--json_out", out, *flags], capture_output=True, text=True,
                          timeout=120)
    print(f"--- mor_loadgen {name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    report = {}
    if os.path.exists(out):
        with open(out) as f:
            report = json.load(f)
    return proc.returncode, report, proc.stderr


def check_distributions(report: dict, where: str) -> None:
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        d = report[key]
        ordered = [d["min"], d["p50"], d["p90"], d["p99"], d["max"]]
        check(all(a <= b + 1e-9 for a, b in zip(ordered, ordered[1:])) and d["min"] >= 0,
              f"{where}: {key} percentiles ordered ({ordered})")
        check(abs(d["median"] - d["p50"]) < 1e-9, f"{where}: {key} median == p50")
        check(d["min"] - 1e-9 <= d["mean"] <= d["max"] + 1e-9, f"{where}: {key} mean in range")
    check(report["ttft_ms"]["max"] <= report["e2el_ms"]["max"] + 1e-9,
          f"{where}: TTFT <= E2E latency")


def run(server_bin: str, loadgen_bin: str, work_dir: str) -> None:
    model_dir = os.path.join(work_dir, "loadgen_model")
    make_random_model(model_dir, sharing="middle_cycle", router_type="expert_choice",
                      router_arch="linear", kv_mode="recursion_wise", num_recursions=3,
                      block_layers=1, seed=7)
    server, address, metrics = start_server(server_bin, model_dir,
                                            os.path.join(work_dir, "loadgen_server.log"))
    try:
        # 1. All at once, 4 in flight, a fixed output length, every policy.
        n, in_len, out_len = 16, 12, 6
        rc, r, _ = loadgen(loadgen_bin, work_dir, "fixed", "--address", address,
                           "--metrics_address", metrics, "--metrics_interval", "20ms",
                           "--num_prompts", str(n), "--max_concurrency", "4",
                           "--policy", "adaptive:1:2:3", "--input_len", str(in_len),
                           "--output_len", str(out_len), "--warmup_requests", "2",
                           "--goodput", "ttft:60000", "--seed", "3")
        check(rc == 0, "fixed: exit code 0")
        check(r.get("completed") == n and r.get("failed") == 0 and r.get("not_sent") == 0,
              f"fixed: {n} requests completed, none failed")
        check(r.get("input_tokens") == n * in_len, "fixed: input tokens = N x input_len")
        check(r.get("output_tokens") == n * out_len, "fixed: output tokens = N x output_len")
        check(r["output_len_check"] == {"checked": n, "mismatched": 0},
              "fixed: every request produced exactly max_tokens")
        check(r["finish_reasons"] == {"FINISH_REASON_MAX_TOKENS": n}, "fixed: finish reasons")
        check(r["duration_s"] > 0 and
              abs(r["output_throughput"] - n * out_len / r["duration_s"]) < 1e-6 and
              abs(r["request_throughput"] - n / r["duration_s"]) < 1e-6,
              "fixed: throughputs = counts / duration")
        check(r["goodput"]["good_requests"] == n, "fixed: every request within a 60 s TTFT SLO")
        check(r["client"]["peak_in_flight"] <= 4, "fixed: at most 4 in flight")
        check(r["client"]["cpu_seconds"] > 0 and r["client"]["threads"] == 2,
              "fixed: client CPU use reported")
        check(0 < r["itl_ms"]["count"] <= n * (out_len - 1),
              "fixed: one ITL gap per chunk after the first")
        check_distributions(r, "fixed")
        pol = r["per_policy"]
        check(sorted(pol) == ["adaptive", "depth1", "depth2", "depth3"],
              f"fixed: per-policy groups ({sorted(pol)})")
        for name, group in pol.items():
            check(group["completed"] == n // 4 and group["output_tokens"] == n // 4 * out_len,
                  f"fixed: {name} has N/4 requests and their tokens")
            steps = group["compute"]["token_steps_per_depth"]
            check(len(steps) == 3 and steps[0] > 0, f"fixed: {name} token steps per depth")
            if name.startswith("depth"):
                d = int(name[5:])
                check(all(s == 0 for s in steps[d:]) and all(s > 0 for s in steps[:d]),
                      f"fixed: {name} spends compute at depths 1..{d} only ({steps})")
                check(abs(group["compute"]["mean_output_depth"] - d) < 1e-9,
                      f"fixed: {name} generated tokens report depth {d}")
        total = r["compute"]["token_steps_per_depth"]
        check(total == [sum(g["compute"]["token_steps_per_depth"][i] for g in pol.values())
                        for i in range(3)], "fixed: per-depth compute adds up over policies")
        srv = r["server"]
        check(srv["generation_tokens"] == n * out_len and srv["prompt_tokens"] == n * in_len,
              "fixed: /metrics token counters match the client's counts")
        check(srv["token_steps_per_depth"] == total,
              "fixed: /metrics per-depth token steps match the final usage messages")
        check(srv["engine_steps"] > 0 and set(srv["stage_seconds"]) ==
              {"schedule", "enter", "block", "exit", "sample"}, "fixed: stage profile")
        check(r["kv"]["capacity_bytes"] > 0 and r["kv"]["scrape_errors"] == 0,
              "fixed: KV gauges sampled")

        # 2. Poisson arrivals, ranged output lengths, no metrics.
        n2 = 12
        rc, r, _ = loadgen(loadgen_bin, work_dir, "poisson", "--address", address,
                           "--num_prompts", str(n2), "--request_rate", "40",
                           "--input_len", "8", "--input_range_ratio", "0.5",
                           "--output_len", "8", "--output_range_ratio", "0.5",
                           "--policy", "2", "--client_threads", "1", "--percentiles", "50,99")
        check(rc == 0 and r.get("completed") == n2, "poisson: every request completed")
        check(r["output_len_check"] == {"checked": n2, "mismatched": 0},
              "poisson: token counts equal each request's drawn max_tokens")
        check(4 * n2 <= r["output_tokens"] <= 12 * n2 and 4 * n2 <= r["input_tokens"] <= 12 * n2,
              "poisson: lengths within the ranges")
        check(r["server"] is None and r["kv"] is None, "poisson: no /metrics without the flag")
        check(list(r["per_policy"]) == ["depth2"], "poisson: one policy group")
        check(r["duration_s"] > 0.1, "poisson: arrivals are spread over time")
        for key in ("ttft_ms", "e2el_ms"):
            d = r[key]
            check(d["min"] <= d["p50"] <= d["p99"] <= d["max"], f"poisson: {key} ordered")

        # 3. The time limit cancels what is still running.
        rc, r, _ = loadgen(loadgen_bin, work_dir, "cancel", "--address", address,
                           "--num_prompts", "64", "--max_concurrency", "2",
                           "--output_len", "400", "--max_duration", "1s")
        check(r.get("hit_max_duration") is True and r.get("completed", 0) < 64,
              "cancel: --max_duration stops the run")
        check(r.get("errors", {}).get("CANCELLED", 0) >= 1 or r.get("not_sent", 0) > 0,
              "cancel: unfinished requests are reported")

        # 4. Refusals.
        rc, _, err = loadgen(loadgen_bin, work_dir, "remote", "--address", "192.0.2.1:50051")
        check(rc != 0 and "only targets 127.0.0.1" in err, "a non-loopback address is refused")
        rc, _, err = loadgen(loadgen_bin, work_dir, "bounds", "--address", address,
                             "--num_prompts", "1000000")
        check(rc != 0 and "num_prompts" in err, "more than 100000 prompts are refused")
        rc, _, err = loadgen(loadgen_bin, work_dir, "depth", "--address", address,
                             "--policy", "4")
        check(rc != 0 and "exceeds the model's Nr" in err, "a depth beyond Nr is refused")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            FAILURES.append("server did not stop on SIGTERM")


def main() -> int:
    try:
        run(sys.argv[1], sys.argv[2], sys.argv[3])
    except AssertionError as e:
        FAILURES.append(str(e))
        print(f"FAILED: {e}")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
