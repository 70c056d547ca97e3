#!/usr/bin/env python3
"""The Docker Compose stack (deploy/compose) without a Docker engine:

  * docker-compose.yml and the GPU override parse (PyYAML) and validate against
    the Compose Specification schema (tests/deploy/schemas/compose-spec.json);
    a broken copy is rejected;
  * every bind-mounted file or folder and the build context exist;
  * Prometheus: with its mounts laid out as in the container, `promtool check
    config` passes (it loads deploy/prometheus/rules too), the job is the one
    the alerts expect and it scrapes the mor-server service on the metrics
    port the image exposes;
  * Grafana: the datasource points at the prometheus service and matches
    deploy/grafana's, the dashboard provider's folder is where the dashboards
    are mounted, the home dashboard exists;
  * mor-server: its flags (base and GPU override) are mor_server flags (the
    binary parses them), the stop grace period exceeds --shutdown_grace, the
    override reserves an NVIDIA GPU and runs on CUDA, ports are published;
  * images are pinned to a version.

Usage: compose_test.py WORK_DIR [--server-binary mor_server]
Prints one line per check and 'N passed, N failed'; exit 77 (skip) without
PyYAML, jsonschema or promtool.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import deploy_common as dc

COMPOSE_DIR = os.path.join(dc.ROOT, "deploy", "compose")
COMPOSE = os.path.join(COMPOSE_DIR, "docker-compose.yml")
GPU_OVERRIDE = os.path.join(COMPOSE_DIR, "docker-compose.gpu.yml")
GRAFANA_DATASOURCE = os.path.join(dc.ROOT, "deploy", "grafana", "provisioning", "datasources",
                                  "prometheus.yml")
JOB = "mor-server"  # the job the rules in deploy/prometheus/rules expect


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} with an empty environment."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of the short-syntax bind mounts."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith((".", "/")):
            source, target = volume.split(":")[:2]
            out.append((os.path.normpath(os.path.join(COMPOSE_DIR, source)), target))
    return out


def container_path(mounts: list[tuple[str, str]], path: str) -> str | None:
    """Host path of `path` inside the container, through the bind mounts."""
    for source, target in sorted(mounts, key=lambda m: -len(m[1])):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source + path[len(target):]
    return None


def lay_out(mounts: list[tuple[str, str]], root: str) -> None:
    """Copies each bind mount to root + its container path."""
    for source, target in mounts:
        destination = root + target
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, destination)
        elif os.path.isfile(source):
            shutil.copy(source, destination)


def run(args, checks: dc.Checks) -> None:
    try:
        import jsonschema  # noqa: PLC0415
        import yaml  # noqa: PLC0415
    except ImportError as e:
        dc.skip(f"{e.name} is not installed (./mor setup installs tools/requirements.txt)")
    promtool = dc.find_tool("promtool", "MOR_PROMTOOL")
    if not promtool:
        dc.skip("promtool not found (./mor setup installs the Debian package prometheus)")
    work = os.path.join(args.work_dir, "deploy_compose")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    with open(os.path.join(dc.SCHEMAS, "compose-spec.json")) as f:
        validator = jsonschema.Draft7Validator(json.load(f))
    files = {}
    for path in (COMPOSE, GPU_OVERRIDE):
        name = os.path.basename(path)
        with open(path) as f:
            text = f.read()
        files[name] = yaml.safe_load(text)
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                  for e in validator.iter_errors(files[name])]
        checks.check(f"{name} follows the Compose Specification", not errors, "; ".join(errors))
        files[name] = yaml.safe_load(interpolate(text))
    broken = copy.deepcopy(files["docker-compose.yml"])
    broken["services"]["mor-server"]["stop_grace"] = "45s"
    checks.check("the schema rejects an unknown service key",
                 any(True for _ in validator.iter_errors(broken)), "accepted")

    compose = files["docker-compose.yml"]
    services = compose.get("services", {})
    checks.check("services mor-server, prometheus and grafana",
                 {"mor-server", "prometheus", "grafana"} <= set(services), f"{list(services)}")
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            checks.check(f"{name} depends on an existing service {dependency}",
                         dependency in services, "")
        image = service.get("image", "")
        if name != "mor-server":
            checks.check(f"{name} image pinned to a version", re.fullmatch(
                r"[\w./-]+:v?\d+\.\d+\.\d+", image) is not None, image)
        for source, _ in bind_mounts(service):
            checks.check(f"{name} mounts {os.path.relpath(source, dc.ROOT)} (exists)",
                         os.path.exists(source), "missing")

    # mor-server: built from the repository's Dockerfile.
    server = services["mor-server"]
    build = server.get("build", {})
    context = os.path.normpath(os.path.join(COMPOSE_DIR, build.get("context", ".")))
    checks.check("mor-server builds the repository's Dockerfile",
                 os.path.isfile(os.path.join(context, build.get("dockerfile", "Dockerfile")))
                 and context == dc.ROOT, context)
    published = {str(p).split(":")[-1] for p in server.get("ports", [])}
    checks.check("mor-server publishes 50051 and 9400", {"50051", "9400"} <= published,
                 f"{published}")
    server_flags = dc.source_flags(dc.SERVER_MAIN)
    stop_grace = dc.parse_duration(server.get("stop_grace_period", "10s"))
    gpu_server = files["docker-compose.gpu.yml"]["services"]["mor-server"]
    for label, command in (("docker-compose.yml", server.get("command", [])),
                           ("docker-compose.gpu.yml", gpu_server.get("command", []))):
        bad = dc.unknown_flags(command, server_flags)
        checks.check(f"{label}: mor-server command flags are mor_server flags",
                     bool(command) and not bad, f"unknown: {bad}")
        values = dc.flag_values(command)
        grace = dc.parse_duration(values.get("shutdown_grace", "5s"))
        checks.check(f"{label}: stop_grace_period > --shutdown_grace + 5 s",
                     stop_grace > grace + 5, f"{stop_grace} s vs {grace} s")
        device = values.get("device", "cpu")
        want_gpu = label == "docker-compose.gpu.yml"
        checks.check(f"{label}: --device={'cuda' if want_gpu else 'cpu'}",
                     device.startswith("cuda") == want_gpu, device)
        if args.server_binary:
            ok, detail = dc.server_accepts_flags(args.server_binary, command, work)
            checks.check(f"{label}: mor_server parses the command flags", ok, detail)
    devices = (gpu_server.get("deploy", {}).get("resources", {}).get("reservations", {})
               .get("devices", []))
    checks.check("GPU override reserves an NVIDIA GPU",
                 any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                     for d in devices), f"{devices}")
    checks.check("the base file reserves no GPU (the GPU is optional)",
                 "deploy" not in server, f"{server.get('deploy')}")

    # Prometheus: the config as the container sees it.
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    config_flag = dc.flag_values(prometheus.get("command", [])).get("config.file")
    root = os.path.join(work, "prometheus-root")
    lay_out(mounts, root)
    config_path = root + (config_flag or "/etc/prometheus/prometheus.yml")
    if checks.check("Prometheus --config.file is a mounted file", os.path.isfile(config_path),
                    f"{config_flag}"):
        run_check = subprocess.run([promtool, "check", "config", config_path],
                                   capture_output=True, text=True, timeout=120)
        checks.check("promtool check config (with the mounted rules)",
                     run_check.returncode == 0 and "SUCCESS" in run_check.stdout
                     and "rule" in run_check.stdout, run_check.stdout + run_check.stderr)
        with open(config_path) as f:
            config = yaml.safe_load(f)
        jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
        checks.check(f"Prometheus job {JOB} (the alerts' job label)", JOB in jobs, f"{jobs}")
        targets = [t for job in jobs.values() for sc in job.get("static_configs", [])
                   for t in sc.get("targets", [])]
        checks.check("Prometheus scrapes mor-server:9400 (the image's metrics port)",
                     targets == ["mor-server:9400"], f"{targets}")
        rules = [r for r in config.get("rule_files", [])]
        rule_files = [os.path.join(os.path.dirname(config_path), r) for r in rules]
        checks.check("Prometheus loads deploy/prometheus/rules/mor_rules.yml",
                     any(os.path.isfile(r) and os.path.basename(r) == "mor_rules.yml"
                         for r in rule_files), f"{rules}")

    # Grafana: datasource and dashboards as provisioned in the container.
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = "/etc/grafana/provisioning"
    datasource_files = [s for s, t in mounts if t.startswith(provisioning + "/datasources/")]
    provider_files = [s for s, t in mounts if t.startswith(provisioning + "/dashboards/")]
    if checks.check("Grafana provisions a datasource and a dashboard provider",
                    len(datasource_files) == 1 and len(provider_files) == 1, f"{mounts}"):
        with open(datasource_files[0]) as f:
            datasource = yaml.safe_load(f)["datasources"][0]
        with open(GRAFANA_DATASOURCE) as f:
            reference = yaml.safe_load(f)["datasources"][0]
        checks.check("datasource points at the prometheus service on 9090",
                     datasource.get("url") == "http://prometheus:9090", datasource.get("url"))
        same = {k: v for k, v in datasource.items() if k != "url"} == \
            {k: v for k, v in reference.items() if k != "url"}
        checks.check("datasource equals deploy/grafana's but for the URL", same,
                     f"{datasource} vs {reference}")
        with open(provider_files[0]) as f:
            provider = yaml.safe_load(f)["providers"][0]
        folder = provider.get("options", {}).get("path", "")
        host_folder = container_path(mounts, folder)
        dashboards = [n for n in os.listdir(host_folder) if n.endswith(".json")] \
            if host_folder and os.path.isdir(host_folder) else []
        checks.check(f"dashboard provider folder {folder} holds the dashboards",
                     "mor-serving.json" in dashboards, f"{host_folder}: {dashboards}")
        home = grafana.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home:
            host_home = container_path(mounts, home)
            checks.check("home dashboard exists in a mount",
                         host_home is not None and os.path.isfile(host_home), f"{home}")
    published = {str(p).split(":")[-1] for p in grafana.get("ports", [])} | \
        {str(p).split(":")[-1] for p in prometheus.get("ports", [])}
    checks.check("Prometheus 9090 and Grafana 3000 published", {"9090", "3000"} <= published,
                 f"{published}")


def main() -> int:
    return dc.run_test(__doc__, run)

if __name__ == "__main__":
    sys.exit(main())
