#!/usr/bin/env python3
"""Model benchmark: the C++ MoR engine vs the eager PyTorch reference.

What `./mor bench model` runs (mor_bench_model without --model_dir hands over
to this script). It

1. writes two random-weight models into <build>/bench-models/ once (cached):
   ``mor-135m``: the paper's 135M-class MoR (d 576, middle_cycle 1 + 10x3 + 1,
   9 heads, 3 KV heads, d_ff 1536, vocab 49152, expert choice, linear router,
   recursion-wise KV), and ``vanilla-30l``: a 30-layer Llama of the same dims;
2. for each dtype (fp32, bf16) runs, one after another on the same machine:
   the C++ engine on MoR with the fixed depth policy Nr (every token through
   every recursion: the same work as the eager reference), the eager PyTorch
   reference (tools/reference/eager_decode.py, fixed depth Nr), the C++ engine
   on MoR with adaptive routing, and the C++ engine on the vanilla model;
3. prints ONE markdown table (decode tokens/s at each batch size, prefill
   tokens/s of a 512-token prompt), the exact command and machine info.

Decode protocol (both engines): ``--prompt-len`` random tokens per sequence
prefilled first (untimed), ``--warmup`` untimed greedy steps, then
``--decode-steps`` timed greedy steps of the whole batch. Prefill: one
sequence of ``--prefill-len`` tokens in one forward, ``--prefill-repeats``
timed runs after one warm-up run. tokens/s = tokens of one step / median step
time (``--stat median``, robust to short interference from other processes;
``--stat mean`` = tokens / total time). The JSON output holds both and every
step time.

The machine may be shared: before each run the script waits (at most
``--wait-quiet`` s) for no other thread to be runnable, samples the runnable
threads during the run, re-runs a disturbed run (``--retries``) and reports the
interference it saw next to the table.
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

# The paper's 135M-class MoR (same flags as `./mor serve`'s random model).
MOR_MODEL = dict(sharing="middle_cycle", router_type="expert_choice", router_arch="linear",
                 kv_mode="recursion_wise", num_recursions=3, hidden_size=576, num_heads=9,
                 num_kv_heads=3, intermediate_size=1536, vocab_size=49152, block_layers=10,
                 max_position_embeddings=2048, disk_dtype="bfloat16", seed=0)
VANILLA_LAYERS = 30
VANILLA_MODEL = dict(sharing="none", hidden_size=576, num_heads=9, num_kv_heads=3,
                     intermediate_size=1536, vocab_size=49152,
                     max_position_embeddings=2048, disk_dtype="bfloat16", seed=1)
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def log(msg: str) -> None:
    print(f"bench_model: {msg}", file=sys.stderr, flush=True)


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
        # make_random_model writes VANILLA_LAYERS layers for sharing "none".
        mk.VANILLA_LAYERS = vanilla_layers
    try:
        cfg = mk.make_random_model(tmp, **spec)
    finally:
        mk.VANILLA_LAYERS = saved
    if vanilla_layers is not None and cfg["num_hidden_layers"] != vanilla_layers:
        raise SystemExit(f"bench_model: expected {vanilla_layers} layers, "
                         f"make_random_model wrote {cfg['num_hidden_layers']}")
    with open(os.path.join(tmp, "bench-spec.json"), "w") as f:
        json.dump(want, f, indent=2)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)


# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------

def procs_running() -> int:
    """Runnable threads on the machine right now (including the caller)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 1


def wait_quiet(max_seconds: float) -> float:
    """Waits (at most max_seconds) until no other thread has been runnable for
    3 s; returns the seconds waited."""
    start = time.perf_counter()
    quiet_since = None
    while time.perf_counter() - start < max_seconds:
        now = time.perf_counter()
        if procs_running() <= 1:
            quiet_since = quiet_since or now
            if now - quiet_since >= 3.0:
                break
        else:
            quiet_since = None
        time.sleep(0.25)
    return time.perf_counter() - start


class ContentionSampler:
    """Samples the machine's runnable threads while a benchmark runs; the mean
    excess over what the benchmark itself uses estimates interference."""

    def __init__(self, own_threads: int):
        import threading
        self.own = own_threads + 1  # the benchmark's threads + this sampler
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.25):
            self.samples.append(max(0, procs_running() - self.own))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean_extra(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0


def run_json(cmd: list[str], name: str, verbose: bool, threads: int):
    """Runs cmd, echoing its table to stderr; returns (JSON lines, wall seconds,
    mean number of other runnable threads during the run)."""
    log(f"[{name}] {' '.join(shlex.quote(c) for c in cmd)}  (load avg {loadavg():.2f})")
    start = time.perf_counter()
    records = []
    with ContentionSampler(threads) as sampler:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)
        for line in proc.stdout:
            if line.startswith("{"):
                records.append(json.loads(line))
            elif verbose:
                sys.stderr.write(f"  {line}")
                sys.stderr.flush()
        rc = proc.wait()
    secs = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"bench_model: [{name}] failed with exit code {rc}")
    return records, secs, sampler.mean_extra


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def build_table(results: dict, dtypes: list[str], batches: list[int], prefill_len: int,
                columns: list[str], key: str) -> tuple[str, dict]:
    """results[(dtype, run)][(phase, batch)] = record. Returns (markdown, ratios)."""
    rows = [("decode", b) for b in batches]
    if prefill_len > 0:
        rows.append(("prefill", 1))
    titles = {"cpp": "C++ MoR", "eager": "eager MoR", "ratio": "C++/eager",
              "adaptive": "C++ MoR adaptive", "vanilla": "C++ vanilla-30L"}
    head = ["tokens/s"]
    for dt in dtypes:
        head += [f"{DTYPE_SHORT.get(dt, dt)} {titles[c]}" for c in columns]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    ratios = {}
    for phase, b in rows:
        cells = [f"decode, batch {b}" if phase == "decode" else f"prefill, {prefill_len}-token prompt"]
        for dt in dtypes:
            def tok(run):
                rec = results.get((dt, run), {}).get((phase, b))
                # Adaptive step times vary with how deep each step's tokens go: the
                # median step is not representative there, the total time is.
                return rec["tok_s" if run == "adaptive" else key] if rec else None
            for c in columns:
                if c == "ratio":
                    a, e = tok("cpp"), tok("eager")
                    r = a / e if a and e else None
                    ratios[(dt, phase, b)] = r
                    cells.append(f"**{r:.2f}x**" if r else "-")
                else:
                    cells.append(fmt(tok(c)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), ratios


def stage_table(results: dict, dtypes: list[str], batches: list[int]) -> str:
    """Per-stage C++ time per decode step (ms), from StepResult.stats."""
    lines = ["| C++ MoR fixed-3, ms/step | wall | embed | unique layers | rec 1 | rec 2 "
             "| rec 3 | lm_head | outside Step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for dt in dtypes:
        recs = results.get((dt, "cpp"), {})
        for key in [("decode", b) for b in batches] + [("prefill", 1)]:
            rec = recs.get(key)
            if not rec:
                continue
            s = rec["ms_per_step"]
            rec_ms = list(s["recursions"]) + [0.0] * (3 - len(s["recursions"]))
            other = s["wall"] - s["step_total"]
            name = (f"{DTYPE_SHORT.get(dt, dt)} decode b={key[1]}" if key[0] == "decode"
                    else f"{DTYPE_SHORT.get(dt, dt)} prefill-{rec['context']}")
            lines.append("| " + " | ".join([name] + [f"{v:.1f}" for v in (
                s["wall"], s["embed"], s["unique_layers"], *rec_ms[:3], s["lm_head"], other)])
                + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"),
                    help="build folder holding bench/mor_bench_model (default build/release)")
    ap.add_argument("--models-dir", default=None,
                    help="where the random models are cached (default <build-dir>/bench-models)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--decode-steps-by-batch", default="",
                    help="per-batch overrides of --decode-steps, e.g. '64:16'")
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--prefill-repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2,
                    help="intra-op threads of both engines (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda:N (both engines)")
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa"],
                    help="C++ engine attention kernel (mor_bench_model --attention)")
    ap.add_argument("--skip", default="",
                    help="comma list of runs to leave out: eager, adaptive, vanilla")
    ap.add_argument("--stat", default="median", choices=["median", "mean"],
                    help="tokens/s from the median step time (robust to interference from "
                         "other processes; default) or from the total time")
    ap.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS",
                    help="before each run wait up to SECONDS for the machine to be idle")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-run a run up to this many times when other processes competed for "
                         "the cores (see --max-interference); the least disturbed attempt is kept")
    ap.add_argument("--max-interference", type=float, default=0.3,
                    help="mean number of other runnable threads above which a run counts as "
                         "disturbed (default 0.3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test defaults: batches 1,8, 4 steps, prefill 128, fp32 only")
    ap.add_argument("--json-out", default=None, help="write every measurement as JSON here")
    ap.add_argument("--quiet", action="store_true", help="do not echo the per-run tables")
    args = ap.parse_args(argv)
    if args.quick:  # smaller defaults; flags given explicitly still win
        ap.set_defaults(batch_sizes="1,8", decode_steps=4, prefill_len=128, dtypes="float32",
                        prefill_repeats=1, warmup=1)
        args = ap.parse_args(argv)

    t_start = time.perf_counter()
    build_dir = os.path.abspath(args.build_dir)
    binary = os.path.join(build_dir, "bench", "mor_bench_model")
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"bench_model: {binary} not found: build it first "
                         f"(./mor build mor_bench_model, or ninja -C {build_dir} mor_bench_model)")
    models_dir = os.path.abspath(args.models_dir or os.path.join(build_dir, "bench-models"))
    mor_dir = os.path.join(models_dir, "mor-135m")
    vanilla_dir = os.path.join(models_dir, f"vanilla-{VANILLA_LAYERS}l")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    ensure_model(mor_dir, MOR_MODEL)
    if "vanilla" not in skip:
        ensure_model(vanilla_dir, VANILLA_MODEL, vanilla_layers=VANILLA_LAYERS)

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    py = sys.executable
    common_cpp = ["--device", args.device, "--batch_sizes", args.batch_sizes,
                  "--prompt_len", str(args.prompt_len), "--decode_steps", str(args.decode_steps),
                  "--prefill_len", str(args.prefill_len),
                  "--prefill_repeats", str(args.prefill_repeats), "--warmup", str(args.warmup),
                  "--threads", str(args.threads), "--attention", args.attention, "--json"]
    if args.decode_steps_by_batch:
        common_cpp += ["--decode_steps_by_batch", args.decode_steps_by_batch]
    common_py = ["--device", args.device, "--batch-sizes", args.batch_sizes,
                 "--prompt-len", str(args.prompt_len), "--decode-steps", str(args.decode_steps),
                 "--prefill-len", str(args.prefill_len),
                 "--prefill-repeats", str(args.prefill_repeats), "--warmup", str(args.warmup),
                 "--threads", str(args.threads), "--json"]
    if args.decode_steps_by_batch:
        common_py += ["--decode-steps-by-batch", args.decode_steps_by_batch]

    nr = MOR_MODEL["num_recursions"]
    results: dict = {}
    run_seconds: dict = {}
    contention: dict = {}
    all_records = []
    for dt in dtypes:
        plan = [("cpp", [binary, "--model_dir", mor_dir, "--dtype", dt, "--policy", f"fixed{nr}",
                         "--label", "mor-135m", *common_cpp])]
        if "eager" not in skip:
            plan.append(("eager", [py, os.path.join(REFERENCE, "eager_decode.py"), mor_dir,
                                   "--dtype", dt, "--policy", f"fixed{nr}", "--label",
                                   "mor-135m", *common_py]))
        if "adaptive" not in skip:
            plan.append(("adaptive", [binary, "--model_dir", mor_dir, "--dtype", dt, "--policy",
                                      "adaptive", "--label", "mor-135m", *common_cpp]))
        if "vanilla" not in skip:
            plan.append(("vanilla", [binary, "--model_dir", vanilla_dir, "--dtype", dt,
                                     "--policy", "adaptive", "--label", "vanilla-30l",
                                     *common_cpp]))
        for run, cmd in plan:
            best = None
            for attempt in range(1 + max(0, args.retries)):
                waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
                if waited > 0.5:
                    log(f"waited {waited:.0f} s for an idle machine")
                load_before = loadavg()
                records, secs, extra = run_json(cmd, f"{DTYPE_SHORT.get(dt, dt)} {run}",
                                                not args.quiet, args.threads)
                if best is None or extra < best[2]:
                    best = (records, secs, extra, load_before)
                if extra <= args.max_interference:
                    break
                log(f"[{DTYPE_SHORT.get(dt, dt)} {run}] other processes competed for the cores "
                    f"(mean {extra:.1f} other runnable threads)"
                    + ("; running it again" if attempt < args.retries else "; keeping the "
                       "least disturbed attempt"))
            records, secs, extra, load_before = best
            run_seconds[(dt, run)] = secs
            contention[(dt, run)] = extra
            for r in records:
                r["run"], r["load_before"], r["other_runnable"] = run, load_before, extra
                results.setdefault((dt, run), {})[(r["phase"], r["batch"])] = r
            all_records += records

    columns = ["cpp", "eager", "ratio", "adaptive", "vanilla"]
    if "eager" in skip:
        columns = [c for c in columns if c not in ("eager", "ratio")]
    columns = [c for c in columns if c not in skip]
    stat_key = "tok_s_median" if args.stat == "median" else "tok_s"
    table, ratios = build_table(results, dtypes, batches, args.prefill_len, columns, stat_key)
    total = time.perf_counter() - t_start
    info = machine_info(args.threads)

    # Command as the user would type it.
    argv_shown = list(sys.argv[1:] if argv is None else argv)
    if len(argv_shown) >= 2 and argv_shown[0] == "--build-dir" and \
            os.path.abspath(argv_shown[1]) == os.path.join(ROOT, "build", "release"):
        argv_shown = argv_shown[2:]  # the default, added by mor_bench_model
    command = " ".join(["./mor bench model", *map(shlex.quote, argv_shown)])

    steps_note = f"{args.decode_steps} timed steps"
    if args.decode_steps_by_batch:
        steps_note += f" (overrides {args.decode_steps_by_batch})"
    depths = []
    for dt in dtypes:
        recs = results.get((dt, "adaptive"), {})
        per_b = [f"b{b} {recs[('decode', b)]['mean_depth']:.2f}" for b in batches
                 if ("decode", b) in recs]
        if per_b:
            depths.append(f"{DTYPE_SHORT.get(dt, dt)} " + " / ".join(per_b))
    utils = [100.0 * r["cpu_seconds"] / (r["seconds"] * args.threads) for r in all_records
             if r.get("seconds") and r.get("cpu_seconds") is not None]
    out = []
    out.append(f"Command: `{command}`")
    out.append(f"Machine: {info['cpu']} ({info['cores']} cores; {info['isa']}), "
               f"{args.threads} threads per engine, device {args.device}, C++ attention "
               f"{args.attention}, torch {info['torch']}, "
               f"Python {info['python']}, commit {info['commit'] or '?'}, {info['date']}")
    out.append(f"Models: random weights, MoR = middle_cycle 1 + 10x3 + 1 (Nr 3, expert choice, "
               f"linear router, recursion-wise KV), vanilla = {VANILLA_LAYERS} layers; "
               f"d 576, 9 heads / 3 KV heads, d_ff 1536, vocab 49152.")
    how = ("batch / median step time" if args.stat == "median"
           else "batch x steps / total time")
    out.append(f"Decode: {args.prompt_len}-token random prompts prefilled (untimed), "
               f"{args.warmup} warm-up steps, {steps_note}; tokens/s = {how}. "
               f"Prefill: one {args.prefill_len}-token prompt, {args.prefill_repeats} runs after "
               f"a warm-up ({args.stat}).")
    out.append("")
    out.append(table)
    out.append("")
    note = (f"C++ MoR and eager MoR use the fixed depth policy {nr} (every token through every "
            f"recursion: identical work); ratio = C++ / eager.")
    if depths:
        note += (f" C++ MoR adaptive = router-decided depth; random routers send about half the "
                 f"tokens deeper at each recursion (mean depth per decoded token: "
                 f"{'; '.join(depths)}), so it does less work than fixed {nr}; its tokens/s are "
                 f"tokens / total time, since its step times vary with the depths taken.")
    out.append(note)
    if utils:
        out.append(f"CPU utilisation of the timed loops: {min(utils):.0f}-{max(utils):.0f}% of "
                   f"{args.threads} threads.")
    if contention:
        worst = max(contention.values())
        out.append("Interference: mean other runnable threads per run " + ", ".join(
            f"{DTYPE_SHORT.get(dt, dt)} {run} {v:.1f}" for (dt, run), v in contention.items())
            + (" (the machine was shared: treat the numbers with care)"
               if worst > args.max_interference else " (the machine was idle)") + ".")
    targets = []
    for dt in dtypes:
        r1 = ratios.get((dt, "decode", 1))
        rmax = ratios.get((dt, "decode", max(batches)))
        if r1 is not None and rmax is not None:
            ok1, ok2 = r1 >= 1.5, rmax >= 1.0
            targets.append(f"{DTYPE_SHORT.get(dt, dt)}: batch 1 {r1:.2f}x "
                           f"({'meets' if ok1 else 'MISSES'} >= 1.5x), batch {max(batches)} "
                           f"{rmax:.2f}x ({'meets' if ok2 else 'MISSES'} >= 1.0x)")
    if targets:
        out.append("Targets: " + "; ".join(targets) + ".")
    out.append("")
    out.append(stage_table(results, dtypes, batches))
    out.append("")
    per_run = ", ".join(f"{DTYPE_SHORT.get(dt, dt)} {run} {s:.0f} s"
                        for (dt, run), s in run_seconds.items())
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
