#!/usr/bin/env python3
"""End to end: mor_server on 127.0.0.1 (port 0) with a tiny random model, driven
by the Python client example; then SIGTERM must stop it with exit code 0.

Usage: python_client_test.py MOR_SERVER_BINARY WORK_DIR
Prints '1 passed, 0 failed' or '0 passed, 1 failed'.
"""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

from make_random_model import make_random_model  # noqa: E402
import mor_client  # noqa: E402


def run(server_binary: str, work_dir: str) -> None:
    model_dir = os.path.join(work_dir, "python_client_model")
    make_random_model(model_dir, sharing="middle_cycle", router_type="expert_choice",
                      router_arch="linear", kv_mode="recursion_wise", num_recursions=3, seed=3)
    log_path = os.path.join(work_dir, "python_client_server.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [server_binary, "--model_dir", model_dir, "--listen_address", "127.0.0.1:0",
             "--kv_cache_bytes", str(64 << 20), "--threads", "1",
             "--metrics_address", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(600):  # up to 60 s for the model to load
            with open(log_path) as f:
                match = re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read())
            if match:
                port = match.group(1)
                break
            if server.poll() is not None:
                raise AssertionError(f"server exited early: {open(log_path).read()}")
            time.sleep(0.1)
        assert port, "server did not start listening"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = mor_client.main(["--address", f"127.0.0.1:{port}", "--tokens", "5,6,7",
                                  "--max-tokens", "6", "--ignore-eos", "--timeout", "30"])
        text = out.getvalue()
        print(text)
        assert rc == 0
        for label in ("[depth 1]", "[depth 2]", "[depth 3]", "[adaptive]"):
            assert label in text, f"missing {label}"
        assert text.count("finish=FINISH_REASON_MAX_TOKENS tokens=6") == 4, text
        # Fixed depth 1: no compute beyond depth 1.
        assert re.search(r"\[depth 1\].*\n.*d1=\d+, d2=0, d3=0", text), text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError("server did not stop on SIGTERM")
    assert code == 0, f"server exit code {code}: {open(log_path).read()}"


def main() -> int:
    try:
        run(sys.argv[1], sys.argv[2])
    except AssertionError as e:
        print(f"FAILED: {e}")
        print("0 passed, 1 failed")
        return 1
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
