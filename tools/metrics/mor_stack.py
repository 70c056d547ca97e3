"""A local metrics stack for tests and demos: mor_server (tiny random model),
the Debian Prometheus server on 127.0.0.1 with its own temporary storage,
and a mixed-depth load driven through the Python gRPC stubs.

Everything listens on 127.0.0.1 only; every wait is bounded in time. Used by
tests/deploy/prometheus_stack_test.py and tools/metrics/render_dashboard.py
(--demo).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

PROMETHEUS = os.environ.get("MOR_PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("MOR_PROMTOOL", "/usr/bin/promtool")
RULES = os.path.join(ROOT, "deploy", "prometheus", "rules", "mor_rules.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "mor-serving.json")
JOB = "mor-server"  # the job name the rules and dashboard expect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(model_dir: str, num_recursions: int = 3, hidden_size: int = 64,
               seed: int = 3) -> str:
    """A small random middle_cycle MoR model with expert-choice routing."""
    from make_random_model import make_random_model
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        make_random_model(model_dir, sharing="middle_cycle", router_type="expert_choice",
                          router_arch="linear", kv_mode="recursion_wise",
                          num_recursions=num_recursions, hidden_size=hidden_size,
                          intermediate_size=2 * hidden_size, seed=seed)
    return model_dir


def stop(process: subprocess.Popen | None, timeout: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


class Server:
    """mor_server on ephemeral 127.0.0.1 ports (gRPC and /metrics)."""

    def __init__(self, binary: str, model_dir: str, log_path: str, extra_args=()):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, "--model_dir", model_dir, "--listen_address", "127.0.0.1:0",
                 "--metrics_address", "127.0.0.1:0", "--threads", "1", *extra_args],
                stdout=log, stderr=subprocess.STDOUT)
        self.grpc_port = self.metrics_port = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = open(log_path).read()
            grpc_match = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            metrics_match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", text)
            if grpc_match and metrics_match:
                self.grpc_port = int(grpc_match.group(1))
                self.metrics_port = int(metrics_match.group(1))
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"mor_server exited early:\n{text}")
            time.sleep(0.1)
        stop(self.process)
        raise RuntimeError(f"mor_server did not start:\n{open(log_path).read()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def scrape(self) -> str:
        url = f"http://{self.metrics_target}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def stop(self) -> int | None:
        return stop(self.process)


class PrometheusClient:
    """The HTTP API of a Prometheus server at `url`."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step:g}")["result"]

    def wait_until(self, expr: str, predicate, timeout: float = 60.0) -> list:
        """Polls `expr` (every 0.5 s, at most `timeout` s) until predicate(result)."""
        deadline = time.monotonic() + timeout
        result = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{expr}: condition not met within {timeout} s (last: {result})")


class Prometheus(PrometheusClient):
    """/usr/bin/prometheus on 127.0.0.1:<free port>, storage in `work_dir`."""

    def __init__(self, work_dir: str, targets: list[str], scrape_interval: str = "1s",
                 rule_files=(RULES,)):
        os.makedirs(work_dir, exist_ok=True)
        config = os.path.join(work_dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n"
                    f"  scrape_interval: {scrape_interval}\n"
                    f"  scrape_timeout: {scrape_interval}\n"
                    f"  evaluation_interval: {scrape_interval}\n"
                    "rule_files:\n" + "".join(f"  - {json.dumps(r)}\n" for r in rule_files) +
                    "scrape_configs:\n"
                    f"  - job_name: {JOB}\n"
                    "    static_configs:\n"
                    f"      - targets: {json.dumps(targets)}\n")
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log_path = os.path.join(work_dir, "prometheus.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--storage.tsdb.path={os.path.join(work_dir, 'data')}",
                 "--storage.tsdb.retention.time=1d", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{open(self.log_path).read()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus did not become ready within 60 s")

    def stop(self) -> int | None:
        return stop(self.process)


def drive_load(address: str, num_requests: int = 48, concurrency: int = 6, seed: int = 0,
               max_seconds: float = 120.0, num_recursions: int = 3,
               max_tokens: tuple[int, int] = (8, 32), policies=None) -> list:
    """Streams `num_requests` requests with mixed recursion policies (round
    robin over `policies`: 0 = adaptive, d = fixed depth d; default adaptive
    and every depth 1..Nr) and random prompt lengths; at most `concurrency` at
    a time, none started after `max_seconds`. Returns one dict per finished
    request: policy, depths of its tokens, final usage."""
    import grpc
    import mor_client

    pb, pb_grpc = mor_client.load_stubs()
    rng = random.Random(seed)
    if policies is None:
        policies = [0] + list(range(1, num_recursions + 1))
    plans = []
    for i in range(num_requests):
        prompt = [rng.randrange(3, 200) for _ in range(rng.randrange(4, 48))]
        plans.append((policies[i % len(policies)], prompt, rng.randrange(*max_tokens)))
    stop_at = time.monotonic() + max_seconds

    def one(plan):
        depth, prompt, max_new = plan
        if time.monotonic() > stop_at:
            return None
        request = pb.GenerateRequest(return_depths=True)
        request.tokens.ids.extend(prompt)
        request.stopping.max_tokens = max_new
        request.stopping.ignore_eos = True
        if depth == 0:
            request.recursion.adaptive.SetInParent()
        else:
            request.recursion.fixed_depth = depth
        depths, final = [], None
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.MorServiceStub(channel)
            for response in stub.Generate(request, timeout=60):
                if response.HasField("chunk"):
                    depths.extend(response.chunk.depths)
                elif response.HasField("final"):
                    final = response.final
        return {"policy": depth, "depths": depths, "usage": final.usage,
                "finish_reason": final.finish_reason}

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [r for r in pool.map(one, plans) if r is not None]


def invalid_requests(address: str, count: int = 2) -> None:
    """Sends `count` requests the server rejects (INVALID_ARGUMENT)."""
    import grpc
    import mor_client

    pb, pb_grpc = mor_client.load_stubs()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.MorServiceStub(channel)
        for _ in range(count):
            request = pb.GenerateRequest()
            request.tokens.ids.extend([1, 2])
            request.recursion.fixed_depth = 99
            try:
                stub.GenerateUnary(request, timeout=10)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
