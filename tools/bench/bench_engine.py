#!/usr/bin/env python3
"""Engine benchmark: continuous depth-wise batching vs depth-grouped vs no depth
awareness vs a vanilla model, the whole engine driven in-process.

What `./mor bench engine` runs (mor_bench_engine without --model_dir hands over
to this script). It

1. writes random-weight models into <build>/bench-models/ once (cached): the
   paper's 135M-class MoR (d 576, 9 heads, 3 KV heads, d_ff 1536, vocab 49152,
   middle_cycle, expert choice, linear router, recursion-wise KV) with Nr = 3
   (1 + 10x3 + 1 layers) and Nr = 4 (1 + 8x4 + 1), and vanilla Llamas of the
   same dims with the same number of effective layers, L = 2 + B x Nr (32, 34);
2. for each Nr and depth policy (adaptive: the routers decide; mix: request i
   runs at fixed depth 1 + i mod Nr) runs ONE mor_bench_engine process that
   measures every mode at every concurrency N, N-major (fresh EngineCore per
   configuration, untimed warm-up on it first, then N requests submitted at
   once, run to completion);
3. when models/default (the trained model) exists, does the same with adaptive
   routing on it against a vanilla model of its dims;
4. prints one markdown table per Nr (ratios vs vanilla and vs depth-grouped
   are within one process, i.e. measured in the same run), a stage-time table,
   the exact command, machine info and the runtime.

Metrics (see bench/engine_bench.cc for the precise definitions): output tokens/s
= N x output_len / wall time from submit to the last token (prefill included,
like vLLM's output throughput at request rate inf); decode tokens/s = tokens
sampled after every request had its first token / that time; rows per
shared-block call (decode steps); KV bytes per cached token (time-averaged over
steps, block-granular and exact).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import loadavg, machine_info  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "tools", "reference")

DIMS = dict(hidden_size=576, num_heads=9, num_kv_heads=3, intermediate_size=1536,
            vocab_size=49152, max_position_embeddings=2048, disk_dtype="bfloat16")
BLOCK_LAYERS = {3: 10, 4: 8}  # 1 + B x Nr + 1 layers: 32 and 34
MODES = ["continuous_depthwise", "depth_grouped", "no_depth_awareness", "vanilla"]
MODE_TITLES = {"continuous_depthwise": "depth-wise (continuous)",
               "depth_grouped": "depth-grouped", "no_depth_awareness": "no depth awareness",
               "vanilla": "vanilla"}


def log(msg: str) -> None:
    print(f"bench_engine: {msg}", file=sys.stderr, flush=True)


def mor_spec(nr: int) -> dict:
    return dict(DIMS, sharing="middle_cycle", router_type="expert_choice", router_arch="linear",
                kv_mode="recursion_wise", num_recursions=nr, block_layers=BLOCK_LAYERS[nr],
                seed=0)


def vanilla_spec(dims: dict) -> dict:
    return dict(dims, sharing="none", seed=1)


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

def ensure_model(path: str, spec: dict, vanilla_layers: int | None = None) -> None:
    """Writes the random model once; a stamp with its spec detects changes."""
    stamp = os.path.join(path, "bench-spec.json")
    want = dict(spec, vanilla_layers=vanilla_layers)
    try:
        with open(stamp) as f:
            if json.load(f) == want:
                return
    except (OSError, ValueError):
        pass
    sys.path.insert(0, REFERENCE)
    import shutil

    import make_random_model as mk

    log(f"generating {os.path.relpath(path, ROOT)} (once; cached)")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    saved = mk.VANILLA_LAYERS
    if vanilla_layers is not None:
        mk.VANILLA_LAYERS = vanilla_layers  # make_random_model's layer count for "none"
    try:
        cfg = mk.make_random_model(tmp, **spec)
    finally:
        mk.VANILLA_LAYERS = saved
    if vanilla_layers is not None and cfg["num_hidden_layers"] != vanilla_layers:
        raise SystemExit(f"bench_engine: expected {vanilla_layers} layers, "
                         f"make_random_model wrote {cfg['num_hidden_layers']}")
    with open(os.path.join(tmp, "bench-spec.json"), "w") as f:
        json.dump(want, f, indent=2)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)


def default_model_dims(path: str) -> tuple[dict, int, int, int] | None:
    """(dims, L, Nr, B) of the trained model in `path`, or None when absent."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    dims = dict(hidden_size=cfg["hidden_size"], num_heads=cfg["num_attention_heads"],
                num_kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                max_position_embeddings=cfg.get("max_position_embeddings", 2048),
                disk_dtype="bfloat16")
    if "head_dim" in cfg:
        dims["head_dim"] = cfg["head_dim"]
    nr = int(cfg.get("num_recursions", 1))
    layers = int(cfg["num_hidden_layers"])
    middle = str(cfg.get("sharing_strategy", "")).startswith("middle")
    b = (layers - 2) // nr if middle else layers // nr
    return dims, layers, nr, b


# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------

def run_json(cmd: list[str], name: str, verbose: bool) -> tuple[list[dict], float]:
    log(f"[{name}] {' '.join(shlex.quote(c) for c in cmd)}  (load avg {loadavg():.2f})")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    records = []
    for line in proc.stdout:
        if line.startswith("{"):
            records.append(json.loads(line))
        elif verbose:
            sys.stderr.write(f"  {line}")
            sys.stderr.flush()
    rc = proc.wait()
    secs = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"bench_engine: [{name}] failed with exit code {rc}")
    return records, secs


def fmt(v, digits=1) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"


def ratio(a, b) -> float | None:
    return a / b if a and b else None


def depth_shares(rec: dict, phase: str = "decode") -> list[float]:
    """Share of tokens that took recursion r (token steps at r / at 1)."""
    steps = rec[phase]["token_steps"]
    if not steps or not steps[0]:
        return []
    return [s / steps[0] for s in steps]


def paper_kv(nr: int) -> float:
    return (nr + 1) / (2 * nr)


def main_table(recs: list[dict], nr: int, block_layers: int, policies: list[str],
               ns: list[int]) -> str:
    """One markdown table for one model pair: per N the vanilla row, then each
    policy's MoR modes (all measured in one process)."""
    by = {(r["policy"], r["n"], r["mode"]): r for r in recs}
    depth_cols = "/".join(str(r) for r in range(1, nr + 1))
    head = ["N", "policy", "mode", "output tok/s", "decode tok/s", "x vanilla",
            "x depth-grouped", "rows / block call", f"rows / call at depth {depth_cols}",
            f"tokens reaching depth {depth_cols}", "KV / cached token",
            "KV vs vanilla (alloc / exact)", "recursion KV vs vanilla (exact)", "CPU %"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for n in ns:
        van = by.get(("-", n, "vanilla"))
        rows = [("-", "vanilla")] + [(p, m) for p in policies for m in MODES if m != "vanilla"]
        for pol, mode in rows:
            r = by.get((pol, n, mode))
            if not r:
                continue
            grp = by.get((pol, n, "depth_grouped"))
            tok = r["tok_s"]
            x_van = ratio(tok, van["tok_s"]) if van and mode != "vanilla" else None
            x_grp = ratio(tok, grp["tok_s"]) if grp and mode not in ("depth_grouped",
                                                                       "vanilla") else None
            d = r["decode"]
            at_depth = "/".join(f"{v:.1f}" for v in d["rows_per_call_at_depth"])
            shares = ("-" if mode == "vanilla" else
                      "/".join(f"{100 * s:.0f}%" for s in depth_shares(r, "all")))
            kv = r["all"]["kv"]
            if mode == "vanilla" or not van:
                kv_rel = "1" if mode == "vanilla" else "-"
                rec_rel = "-"
            else:
                vkv = van["all"]["kv"]
                kv_rel = (f"{kv['bytes_per_token'] / vkv['bytes_per_token']:.3f} / "
                          f"{kv['exact_bytes_per_token'] / vkv['exact_bytes_per_token']:.3f}")
                # Vanilla's recursion part: B x Nr of its L layers.
                v_rec = vkv["exact_bytes_per_token"] * block_layers * nr / van["num_layers"]
                rec_rel = f"{kv['exact_depth_bytes_per_token'] / v_rec:.3f}"
            if x_van and mode == "continuous_depthwise":
                x_van_s = f"**{x_van:.2f}x**"
            else:
                x_van_s = f"{x_van:.2f}x" if x_van else "-"
            if x_grp and mode == "continuous_depthwise":
                x_grp_s = f"**{x_grp:.2f}x**"
            else:
                x_grp_s = f"{x_grp:.2f}x" if x_grp else "-"
            cells = [str(n), pol, MODE_TITLES[mode], fmt(tok), fmt(r["decode_tok_s"]), x_van_s,
                     x_grp_s, f"{d['rows_per_call']:.1f}", at_depth, shares,
                     f"{kv['bytes_per_token'] / 1024:.1f} KiB", kv_rel, rec_rel,
                     f"{100 * r['cpu_seconds'] / max(1e-9, r['seconds']):.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(recs: list[dict], n: int) -> str:
    """Where the time goes at concurrency n: ms per output token by stage."""
    lines = ["| model | policy | mode | wall | enter: embed + first layer "
             "| shared block (all recursions) | exit: last layer + LM head | sampling "
             "| rest (scheduler, bookkeeping) | steps | rows / block call (decode) | CPU % |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        if r["n"] != n:
            continue
        s = r["all"]["seconds"]
        tokens = max(1, r["output_tokens"])
        ms = lambda v: f"{1e3 * v / tokens:.2f}"  # noqa: E731
        enter, block, exit_ = s["stage"]
        if r["mode"] != "continuous_depthwise":
            # Step(): stage 0 is embedding + BOTH unique layers, stage 2 the LM head.
            # Split the unique layers evenly (they have the same shape) for the table.
            if r["mode"] != "vanilla":
                enter, exit_ = enter / 2, exit_ + enter / 2
        rest = r["seconds"] - (s["stage"][0] + s["stage"][1] + s["stage"][2] + s["sample"])
        lines.append("| " + " | ".join([
            r["model"].split(" expert")[0], r["policy"], MODE_TITLES[r["mode"]],
            ms(r["seconds"]), ms(enter), ms(block), ms(exit_), ms(s["sample"]), ms(rest),
            str(r["all"]["steps"]), f"{r['decode']['rows_per_call']:.1f}",
            f"{100 * r['cpu_seconds'] / max(1e-9, r['seconds']):.0f}"]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"),
                    help="build folder holding bench/mor_bench_engine (default build/release)")
    ap.add_argument("--models-dir", default=None,
                    help="where the random models are cached (default <build-dir>/bench-models)")
    ap.add_argument("--nr", default="3,4", help="recursion counts to run (3, 4)")
    ap.add_argument("--policies", default="adaptive,mix")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--output-len-by-concurrency", default="1:16",
                    help="per-N overrides of --output-len (default '1:16')")
    ap.add_argument("--rounds", type=int, default=1,
                    help="R x N requests with N in flight: the next one is submitted as soon as "
                         "one finishes (default 1: N requests at once, run to completion)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs per configuration, interleaved with the other modes of "
                         "the same N; the fastest is reported (default 2: the 2-core machine is "
                         "shared, a burst of load from other processes hits one run, not both)")
    ap.add_argument("--warmup-tokens", type=int, default=4)
    ap.add_argument("--warmup-prompt-len", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--default-model", default=os.path.join(ROOT, "models", "default"),
                    help="trained model to run with adaptive routing when it exists")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: N 1,8, prompt 8, 4 output tokens, Nr 3, policy mix")
    ap.add_argument("--json-out", default=None, help="write every measurement as JSON here")
    ap.add_argument("--quiet", action="store_true", help="do not echo the per-run tables")
    args = ap.parse_args(argv)
    if args.quick:
        args.concurrency, args.prompt_len, args.output_len = "1,8", 8, 4
        args.nr, args.policies, args.output_len_by_concurrency = "3", "mix", ""
        args.repeats = 1

    t_start = time.perf_counter()
    build_dir = os.path.abspath(args.build_dir)
    binary = os.path.join(build_dir, "bench", "mor_bench_engine")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"bench_engine: {binary} not found: build it first "
                         f"(./mor build mor_bench_engine)")
    models_dir = os.path.abspath(args.models_dir or os.path.join(build_dir, "bench-models"))
    nrs = [int(x) for x in args.nr.split(",") if x.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    ns = [int(x) for x in args.concurrency.split(",") if x.strip()]
    for nr in nrs:
        if nr not in BLOCK_LAYERS:
            raise SystemExit(f"bench_engine: --nr {nr}: only {sorted(BLOCK_LAYERS)}")

    common = ["--modes", args.modes, "--concurrency", args.concurrency,
              "--prompt_len", str(args.prompt_len), "--output_len", str(args.output_len),
              "--rounds", str(args.rounds), "--repeats", str(args.repeats), "--warmup_tokens", str(args.warmup_tokens),
              "--warmup_prompt_len", str(args.warmup_prompt_len),
              "--dtype", args.dtype, "--device", args.device, "--threads", str(args.threads),
              "--json"]
    if args.output_len_by_concurrency:
        common += ["--output_len_by_concurrency", args.output_len_by_concurrency]

    plan = []  # (group name, nr, block_layers, policy, cmd)
    for nr in nrs:
        b = BLOCK_LAYERS[nr]
        mor_dir = os.path.join(models_dir, f"engine-mor-nr{nr}")
        van_layers = 2 + b * nr
        van_dir = os.path.join(models_dir, f"engine-vanilla-{van_layers}l")
        ensure_model(mor_dir, mor_spec(nr))
        ensure_model(van_dir, vanilla_spec(DIMS), vanilla_layers=van_layers)
        plan.append((f"Nr={nr}", nr, b, ",".join(policies),
                     [binary, "--model_dir", mor_dir, "--vanilla_model_dir", van_dir,
                      "--policy", ",".join(policies), "--label", f"mor-nr{nr}", *common]))
    default = default_model_dims(args.default_model)
    default_note = ""
    if default is not None:
        dims, layers, dnr, b = default
        van_dir = os.path.join(models_dir, f"engine-vanilla-default-{layers}l")
        ensure_model(van_dir, vanilla_spec(dims), vanilla_layers=layers)
        plan.append(("trained default", dnr, b, "adaptive",
                     [binary, "--model_dir", args.default_model, "--vanilla_model_dir", van_dir,
                      "--policy", "adaptive", "--label", "default", *common]))
    else:
        default_note = (f"The trained default model ({os.path.relpath(args.default_model, ROOT)}) "
                        "does not exist yet: its adaptive-routing run was skipped.")

    groups: dict = {}
    run_seconds = []
    all_records = []
    for name, nr, b, pol, cmd in plan:
        load_before = loadavg()
        records, secs = run_json(cmd, name, not args.quiet)
        run_seconds.append((name, secs))
        for r in records:
            r["group"], r["load_before"] = name, load_before
        groups.setdefault((name, nr, b), []).extend(records)
        all_records += records

    total = time.perf_counter() - t_start
    info = machine_info(args.threads)
    argv_shown = list(sys.argv[1:] if argv is None else argv)
    if len(argv_shown) >= 2 and argv_shown[0] == "--build-dir" and \
            os.path.abspath(argv_shown[1]) == os.path.join(ROOT, "build", "release"):
        argv_shown = argv_shown[2:]  # the default, added by mor_bench_engine
    command = " ".join(["./mor bench engine", *map(shlex.quote, argv_shown)])

    out = [f"Command: `{command}`",
           f"Machine: {info['cpu']} ({info['cores']} cores; {info['isa']}), {args.threads} "
           f"intra-op threads, device {args.device}, dtype {args.dtype}, torch {info['torch']}, "
           f"commit {info['commit'] or '?'}, {info['date']}",
           (f"Models: random weights; MoR = middle_cycle 1 + Bx{'/'.join(map(str, nrs))} + 1 "
            f"(B = {', '.join(str(BLOCK_LAYERS[n]) for n in nrs)}), expert choice, linear "
            f"router, recursion-wise KV; vanilla = "
            f"{', '.join(str(2 + BLOCK_LAYERS[n] * n) for n in nrs)} "
            f"layers; d 576, 9 heads / 3 KV heads, d_ff 1536, vocab 49152."
            if nrs else "Models: only the trained default model (below; its vanilla baseline has "
            "random weights of the same dims and layer count: the cost does not depend on "
            "the weights)."),
           f"Workload: N requests submitted at once, {args.prompt_len}-token random prompts, "
           f"{args.output_len} output tokens (greedy, ignore_eos"
           + (f"; overrides {args.output_len_by_concurrency}" if args.output_len_by_concurrency
              else "") + f"); untimed warm-up of N x ({args.warmup_prompt_len} + "
           f"{args.warmup_tokens}) tokens on the same engine first"
           + (f"; a pool of {args.rounds} x N requests, N in flight (the next one is "
              f"submitted as soon as one finishes)" if args.rounds > 1 else "")
           + f"; fastest of {args.repeats} interleaved timed runs per configuration.",
           ""]
    for (name, nr, b), recs in groups.items():
        pols = [p for p in policies + ["adaptive"] if any(r["policy"] == p for r in recs)]
        pols = list(dict.fromkeys(pols))
        out.append(f"### {name} (Nr = {nr}, B = {b}; vanilla L = {2 + b * nr}; paper's "
                   f"recursion-wise KV model (Nr+1)/(2Nr) = {paper_kv(nr):.3f})")
        out.append("")
        out.append(main_table(recs, nr, b, pols, ns))
        out.append("")
    if default_note:
        out.append(default_note)
        out.append("")
    nmax = max(ns)
    out.append(f"Where the time goes at N = {nmax} (ms of the timed run per output token, from "
               "EngineStepStats stage times; for depth-grouped / no depth awareness / vanilla "
               "the model reports embedding + both unique layers as one figure, split evenly "
               "here; CPU % = process CPU time / wall, 200 = both cores):")
    out.append("")
    out.append(stage_table(all_records, nmax))
    out.append("")
    utils = [100.0 * r["cpu_seconds"] / (r["seconds"] * args.threads) for r in all_records
             if r.get("seconds")]
    if utils:
        out.append(f"CPU utilisation of the timed runs: {min(utils):.0f}-{max(utils):.0f}% of "
                   f"{args.threads} threads; load average before the processes: "
                   + ", ".join(f"{r:.1f}" for r in sorted({round(x['load_before'], 1)
                                                         for x in all_records})) + ".")
    per_run = ", ".join(f"{n} {s:.0f} s" for n, s in run_seconds)
    out.append(f"Runtime: {total:.0f} s in all ({per_run}).")
    print("\n".join(out))
    sys.stdout.flush()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"command": command, "machine": info, "records": all_records,
                       "total_seconds": total}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
