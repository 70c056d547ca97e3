"""Helpers shared by the benchmark orchestrators in tools/bench/."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                     if x in have)
                    break
    except OSError:
        pass
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "?"
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": flags, "threads": threads,
            "torch": torch_version, "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


# ----------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# Repeated runs
# ----------------------------------------------------------------------------

def median_spread(values) -> tuple[float, float, float] | None:
    """(median, min, max) of the values that are not None, or None when none are."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    n = len(vals)
    med = vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])
    return med, vals[0], vals[-1]


def fmt_num(v, digits: int = 1) -> str:
    """Large values without decimals, small ones with `digits`."""
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"


def fmt_spread(stats, digits: int = 1) -> str:
    """'median (min-max)' of median_spread's triple; just the value for one run."""
    if stats is None:
        return "-"
    med, lo, hi = stats
    if hi - lo <= 1e-12:
        return fmt_num(med, digits)
    return f"{fmt_num(med, digits)} ({fmt_num(lo, digits)}-{fmt_num(hi, digits)})"


def rotate(items: list, k: int) -> list:
    """items rotated left by k: repeat k of interleaved runs starts elsewhere."""
    k %= max(1, len(items))
    return items[k:] + items[:k]


def lookup(record, path: str):
    """'ttft_ms.p99' -> record['ttft_ms']['p99'], or None when any part is missing."""
    cur = record
    for part in path.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return None
        cur = cur[part]
    return cur


def md_table(head: list[str], rows: list[list[str]], left: int = 2) -> str:
    """A markdown table; the first `left` columns left-aligned, the rest right-aligned."""
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------
# mor_server processes
# ----------------------------------------------------------------------------

class MorServerProcess:
    """One mor_server on 127.0.0.1 with ephemeral gRPC and metrics ports; its
    output goes to `log_path`. start() waits until it listens."""

    def __init__(self, key: str, binary: str, model_dir: str, flags: list[str], log_path: str):
        self.key, self.model_dir, self.log_path = key, model_dir, log_path
        self.cmd = [binary, "--model_dir", model_dir, "--listen_address", "127.0.0.1:0",
                    "--metrics_address", "127.0.0.1:0", *flags]
        self.proc = None
        self.address = self.metrics = None  # host:port, once started
        self.warm = False  # for the caller: whether it has been warmed up

    def start(self, timeout: float = 600) -> None:
        print(f"mor_server [{self.key}]: {' '.join(shlex.quote(c) for c in self.cmd)}",
              file=sys.stderr, flush=True)
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(self.log_path) as f:
                text = f.read()
            grpc = re.search(r"listening on (127\.0\.0\.1:\d+)", text)
            metrics = re.search(r"metrics on http://(127\.0\.0\.1:\d+)/metrics", text)
            if grpc and metrics:
                self.address, self.metrics = grpc.group(1), metrics.group(1)
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"mor_server [{self.key}] exited:\n{text[-3000:]}")
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"mor_server [{self.key}] did not start in {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM (the server drains), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
