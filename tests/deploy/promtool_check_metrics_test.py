#!/usr/bin/env python3
"""`promtool check metrics` on a real scrape: mor_server (tiny random MoR model)
after a short mixed-depth load and one rejected request. promtool passes empty
input, so the scrape must also be non-empty and carry the mor_ families.

Usage: promtool_check_metrics_test.py MOR_SERVER_BINARY WORK_DIR
Prints 'N passed, N failed'.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "metrics"))

import mor_stack  # noqa: E402

# Families that must be in every scrape (one per area of the issue).
REQUIRED = [
    "mor_model_info", "mor_recursion_token_steps_total", "mor_recursion_estimated_flops_total",
    "mor_shared_block_batch_tokens", "mor_adaptive_exit_tokens_total", "mor_requests_total",
    "mor_kv_cache_depth_used_blocks", "mor_kv_cache_depth_capacity_blocks",
    "mor_kv_cache_depth_usage_ratio", "mor_kv_cache_depth_used_bytes",
    "mor_kv_cache_usage_ratio", "mor_time_to_first_token_seconds",
    "mor_inter_token_latency_seconds", "mor_request_time_per_output_token_seconds",
    "mor_e2e_request_latency_seconds", "mor_request_queue_time_seconds",
    "mor_request_prefill_time_seconds", "mor_request_decode_time_seconds",
    "mor_num_requests_running", "mor_num_requests_waiting", "mor_prompt_tokens_total",
    "mor_generation_tokens_total", "mor_num_preemptions_total", "mor_request_success_total",
    "mor_request_failures_total", "mor_engine_step_stage_duration_seconds",
]


def main() -> int:
    binary, work_dir = sys.argv[1], sys.argv[2]
    work = os.path.join(work_dir, "promtool_check_metrics")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {name}" + ("" if ok else f": {detail}"))

    server = None
    try:
        model = mor_stack.make_model(os.path.join(work, "model"))
        server = mor_stack.Server(binary, model, os.path.join(work, "server.log"))
        results = mor_stack.drive_load(server.address, num_requests=8, concurrency=4)
        mor_stack.invalid_requests(server.address, count=1)
        check("load finished", len(results) == 8, f"{len(results)} of 8")
        text = server.scrape()
        with open(os.path.join(work, "scrape.txt"), "w") as f:
            f.write(text)
        samples = [line for line in text.splitlines() if line and not line.startswith("#")]
        check("scrape is not empty", len(samples) > 100, f"{len(samples)} sample lines")
        types = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        missing = [name for name in REQUIRED if name not in types]
        check("scrape has every required family", not missing, f"missing {missing}")
        check("every family is mor_*", all(t.startswith("mor_") for t in types),
              f"{sorted(t for t in types if not t.startswith('mor_'))}")
        run = subprocess.run([mor_stack.PROMTOOL, "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=60)
        check("promtool check metrics reports nothing",
              run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(),
              f"rc {run.returncode}: {run.stdout}{run.stderr}")
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        check("harness", False, f"{type(e).__name__}: {e}")
    finally:
        if server is not None:
            code = server.stop()
            check("mor_server stopped cleanly", code == 0, f"exit code {code}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
