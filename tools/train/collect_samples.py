#!/usr/bin/env python3
"""Generate the model card's samples through the served model and the gRPC client.

  collect_samples.py [--build build/release] [--model models/default] [--out FILE]

Starts build/release/server/mor_server on a free 127.0.0.1 port with the model,
waits until grpc.health.v1 says SERVING (bounded), then asks
build/release/server/mor_client for three continuations per depth policy
(fixed depth 1..Nr and adaptive), sampled with a fixed seed, and writes them as
markdown (stdout, or --out) with each stream's usage line (finish reason, tokens,
token steps per depth). Stops the server with SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["And the LORD said unto Moses,", "Blessed are they that",
           "In the beginning"]
SAMPLING = ["--temperature", "0.7", "--top_p", "0.9", "--seed", "7", "--max_tokens", "48"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with open(os.path.join(args.model, "config.json")) as f:
        nr = int(json.load(f).get("num_recursions", 1))
    server_bin = os.path.join(args.build, "server", "mor_server")
    client_bin = os.path.join(args.build, "server", "mor_client")
    addr = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([server_bin, "--model_dir", args.model, "--listen_address", addr,
                               "--metrics_address", ""], stderr=subprocess.DEVNULL)
    lines = []
    try:
        for _ in range(120):  # up to ~60 s for the model to load
            res = subprocess.run([client_bin, "--address", addr, "--health"],
                                 capture_output=True, text=True)
            if "SERVING" in res.stdout and "NOT_SERVING" not in res.stdout:
                break
            if server.poll() is not None:
                sys.exit("collect_samples: mor_server exited")
            time.sleep(0.5)
        else:
            sys.exit("collect_samples: server not SERVING after 60 s")
        policies = [(f"fixed depth {d}", d) for d in range(1, nr + 1)] + [("adaptive", 0)]
        lines.append(f"Sampled with `mor_client \"<prompt>\" --depth D {' '.join(SAMPLING)}` "
                     "against `mor_server --model_dir models/default`.\n")
        for title, depth in policies:
            lines.append(f"### {title}\n")
            for prompt in PROMPTS:
                res = subprocess.run([client_bin, "--address", addr, prompt, "--depth",
                                      str(depth), *SAMPLING], capture_output=True, text=True,
                                     timeout=120)
                if res.returncode != 0:
                    sys.exit(f"collect_samples: mor_client failed: {res.stderr}")
                text = (prompt + res.stdout.rstrip("\n")).replace("\n", " / ")
                usage = res.stderr.strip().splitlines()[-1]
                lines.append(f"- {text}  \n  `{usage}`")
            lines.append("")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    out = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(out)
    print(out)


if __name__ == "__main__":
    main()
