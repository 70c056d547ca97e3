"""Generate the MoR parity-fixture matrix the C++ engine is tested against.

Usage::

    make_parity_fixtures.py --out DIR [--quick]

Layout written (deterministic; fixed seeds)::

    DIR/manifest.json
    DIR/<case>/model/                   config.json + safetensors (model dir)
    DIR/<case>/expected.safetensors     reference outputs

Tensors in ``expected.safetensors``, for sequence i in 0..num_sequences-1 and
policy p in ``adaptive``, ``fixed1`` .. ``fixed<Nr>``:

* ``tokens.{i}``        int32   [n]          input token ids
* ``logits.{p}.{i}``    float32 [n, vocab]   logits of every position
* ``depths.{p}.{i}``    int32   [n]          recursion depth reached per token
* ``scores.{p}.{i}``    float32 [n, Nr]      router scores, NaN = not evaluated
* ``logits.hf.{i}``     float32 [n, vocab]   HF transformers logits (vanilla only)
* ``bf16_error.{p}.{i}`` float32 [2]         [max, mean] |error| of the reference
  in bf16 vs its fp32 logits (fixed policies)
* ``greedy.{p}.{i}``    int32   [8]          reference greedy continuation
  (sequences 0 and 1, only where robust: see ``_add_greedy``)

Cases: every sharing strategy x router type x kv mode (names
``<sharing>_<ec|tc>_<rw|rs>``; Nr alternates 2/3, router_arch linear/mlp,
token choice uses sigmoid for the *sequence strategies, middle_sequence writes a
non-default alpha/threshold), plus ``vanilla`` and ``vanilla_headdim32`` (HF
Llama configs, checked against transformers; the latter with head_dim 32, one
KV head, rope_theta 5e5, eps 1e-6), ``sharded`` (3 shards), ``bf16`` (bf16 on
disk, all aliases written) and ``untied`` (separate lm_head, B = 3, rope_theta
1e5).

Adaptive sequences are robust: every evaluated expert-choice score is at least
MARGIN away from the threshold, every token-choice top-2 gap of probs + bias is
at least MARGIN, and every depth 1..Nr is reached by some token of some
adaptive sequence of each routed case. Otherwise tokens are re-drawn (bounded)
and then the model seed changes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_random_model import make_random_model  # noqa: E402
from mor_reference import load_model  # noqa: E402

SEQ_LENGTHS = (7, 19, 33)
MARGIN = 1e-3
GREEDY_NEW = 8        # greedy continuation length written per sequence
HF_ATOL = 1e-4
MAX_SEQ_TRIES = 20    # re-draws of one sequence before changing the seed
MAX_SET_TRIES = 10    # re-draws of the whole set for depth coverage
MAX_SEEDS = 10
FORMAT_VERSION = 1

STRATEGIES = ("cycle", "sequence", "middle_cycle", "middle_sequence")
ROUTERS = (("expert_choice", "ec"), ("token_choice", "tc"))
KV_MODES = (("recursion_wise", "rw"), ("recursive_sharing", "rs"))


def case_specs() -> list[dict]:
    """The parity matrix: name -> make_random_model kwargs (+ 'hf' flag)."""
    specs = []
    for i, (sharing, (rt, rt_s), (kv, kv_s)) in enumerate(
            itertools.product(STRATEGIES, ROUTERS, KV_MODES)):
        kw = dict(sharing=sharing, router_type=rt, kv_mode=kv,
                  num_recursions=2 if i % 2 == 0 else 3,
                  router_arch=("linear", "mlp")[(i + i // 4) % 2],
                  seed=1000 + 10 * i)
        if rt == "token_choice" and (i // 4) % 2 == 1:
            kw["router_activation"] = "sigmoid"
        if sharing == "middle_sequence":  # exercise non-default gate settings
            if rt == "expert_choice":
                kw.update(router_alpha=0.3, router_threshold=0.45)
            else:
                kw.update(router_alpha=0.5)
        specs.append(dict(name=f"{sharing}_{rt_s}_{kv_s}", **kw))
    specs += [
        dict(name="vanilla", sharing="none", hf_vanilla_names=True, seed=2000,
             hf=True),
        dict(name="vanilla_headdim32", sharing="none", hf_vanilla_names=True,
             head_dim=32, num_kv_heads=1, rope_theta=500000.0, rms_norm_eps=1e-6,
             seed=2010, hf=True),
        dict(name="sharded", sharing="middle_cycle", router_type="expert_choice",
             router_arch="linear", kv_mode="recursion_wise", num_recursions=3,
             shards=3, seed=2020),
        dict(name="bf16", sharing="middle_cycle", router_type="expert_choice",
             router_arch="mlp", kv_mode="recursive_sharing", num_recursions=2,
             disk_dtype="bfloat16", write_all_aliases=True, seed=2030),
        dict(name="untied", sharing="middle_cycle", router_type="token_choice",
             router_arch="linear", kv_mode="recursion_wise", num_recursions=3,
             block_layers=3, tie=False, rope_theta=100000.0, seed=2040),
    ]
    return specs


def robust_margin(model, depths, scores) -> float:
    """Smallest distance of an adaptive routing decision from its tie point."""
    cfg = model.cfg
    if cfg.is_vanilla:
        return float("inf")
    if cfg.router_type == "expert_choice":
        ev = scores[~torch.isnan(scores)]
        return float((ev - cfg.router_threshold).abs().min())
    biased = scores.clone()
    if model.router_bias is not None:
        biased = biased + model.router_bias.float().cpu()
    if biased.shape[1] < 2:
        return float("inf")
    top2 = biased.topk(2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min())


def _draw_sequences(model, gen):
    """Draw one robust token sequence per length; None when retries run out."""
    seqs = []
    for n in SEQ_LENGTHS:
        for _ in range(MAX_SEQ_TRIES):
            toks = torch.randint(0, model.cfg.vocab_size, (n,), generator=gen).tolist()
            _, depths, scores = model.forward(toks)
            margin = robust_margin(model, depths, scores)
            if margin >= MARGIN:
                seqs.append((toks, depths, margin))
                break
        else:
            return None
    return seqs


def build_case(spec: dict, out_dir: str) -> dict:
    """Write one case (model + expected outputs); returns its manifest entry."""
    spec = dict(spec)
    name, want_hf = spec.pop("name"), spec.pop("hf", False)
    base_seed = spec.pop("seed")
    case_dir = os.path.join(out_dir, name)
    model_dir = os.path.join(case_dir, "model")
    for seed in range(base_seed, base_seed + MAX_SEEDS):
        if os.path.exists(case_dir):
            shutil.rmtree(case_dir)
        make_random_model(model_dir, seed=seed, **spec)
        model = load_model(model_dir)
        if model.unused_keys:
            raise RuntimeError(f"{name}: loader ignored tensors {model.unused_keys}")
        nr = model.cfg.num_recursions
        gen = torch.Generator().manual_seed(seed)
        for _ in range(MAX_SET_TRIES):
            seqs = _draw_sequences(model, gen)
            if seqs is None:
                break
            reached = set(torch.cat([d for _, d, _ in seqs]).tolist())
            if reached >= set(range(1, nr + 1)):
                break
        else:
            seqs = None
        if seqs is not None:
            break
    else:
        raise RuntimeError(f"{name}: no robust fixture after {MAX_SEEDS} seeds")

    policies = ["adaptive"] + [f"fixed{d}" for d in range(1, nr + 1)]
    expected: dict[str, torch.Tensor] = {}
    for i, (toks, _, _) in enumerate(seqs):
        expected[f"tokens.{i}"] = torch.tensor(toks, dtype=torch.int32)
        for p in policies:
            depth = None if p == "adaptive" else int(p[len("fixed"):])
            logits, depths, scores = model.forward(toks, depth)
            expected[f"logits.{p}.{i}"] = logits.float().contiguous()
            expected[f"depths.{p}.{i}"] = depths.to(torch.int32)
            expected[f"scores.{p}.{i}"] = scores.float().contiguous()
    greedy_written = _add_greedy(model, seqs, policies, expected)
    _add_bf16_error(model_dir, seqs, policies, expected)
    if want_hf:
        _add_hf_logits(name, model_dir, seqs, expected)
    save_file(expected, os.path.join(case_dir, "expected.safetensors"),
              metadata={"case": name})  # one key: multi-key order is random

    cfg = model.cfg
    routed = not cfg.is_vanilla
    return {
        "name": name,
        "dir": name,
        "model_dir": f"{name}/model",
        "expected": f"{name}/expected.safetensors",
        "Nr": nr,
        "sharing": cfg.sharing_strategy,
        "router_type": cfg.router_type if routed else None,
        "router_arch": cfg.router_arch if routed else None,
        "router_activation": cfg.router_activation if routed else None,
        "router_alpha": cfg.router_alpha if routed else None,
        "router_threshold": cfg.router_threshold if routed else None,
        "kv_mode": cfg.kv_mode if routed else None,
        "num_hidden_layers": cfg.num_hidden_layers,
        "block_size": cfg.block_size,
        "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "disk_dtype": spec.get("disk_dtype", "float32"),
        "shards": spec.get("shards", 1),
        "all_aliases_written": spec.get("write_all_aliases", False),
        "seed": seed,
        "policies": policies,
        "num_sequences": len(seqs),
        "seq_lengths": [len(t) for t, _, _ in seqs],
        "has_hf_logits": want_hf,
        "min_routing_margin": min(m for _, _, m in seqs) if routed else None,
        "greedy_new_tokens": GREEDY_NEW,
        "greedy_written": greedy_written,
    }


def _add_bf16_error(model_dir, seqs, policies, expected) -> None:
    """Add ``bf16_error.{p}.{i}``: [max, mean] |logits| error of the reference
    itself run in bf16, against its fp32 logits (fixed-depth policies only:
    bf16 may flip adaptive routing decisions). The engine's bf16 error is
    judged against this: bf16 cannot be closer to fp32 than the reference's
    own bf16 rounding allows, whatever the order of operations."""
    model16 = load_model(model_dir, dtype=torch.bfloat16)
    for i, (toks, _, _) in enumerate(seqs):
        for p in policies:
            if p == "adaptive" and not model16.cfg.is_vanilla:
                continue
            depth = None if p == "adaptive" else int(p[len("fixed"):])
            logits16, _, _ = model16.forward(toks, depth)
            err = (logits16.float() - expected[f"logits.{p}.{i}"]).abs()
            expected[f"bf16_error.{p}.{i}"] = torch.tensor(
                [float(err.max()), float(err.mean())], dtype=torch.float32)


def _add_greedy(model, seqs, policies, expected) -> int:
    """Add ``greedy.{p}.{i}``: the reference's greedy continuation.

    Written only where it is robust: every argmax wins by at least MARGIN and
    (adaptive) every routing decision over prompt + continuation is at least
    MARGIN from its tie point, so the engine cannot diverge on float noise.
    Returns how many continuations were written.
    """
    written = 0
    for i, (toks, _, _) in enumerate(seqs[:2]):
        for p in policies:
            depth = None if p == "adaptive" else int(p[len("fixed"):])
            new = model.generate_greedy(toks, GREEDY_NEW, depth)
            full = toks + new[:-1]
            logits, depths, scores = model.forward(full, depth)
            tail = logits[len(toks) - 1:]
            top2 = tail.topk(2, dim=-1).values
            if float((top2[:, 0] - top2[:, 1]).min()) < MARGIN:
                continue
            if depth is None and robust_margin(model, depths, scores) < MARGIN:
                continue
            expected[f"greedy.{p}.{i}"] = torch.tensor(new, dtype=torch.int32)
            written += 1
    return written


def _add_hf_logits(name, model_dir, seqs, expected) -> None:
    """Add ``logits.hf.{i}`` from transformers and assert agreement (<= HF_ATOL)."""
    import transformers
    from transformers import LlamaForCausalLM
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf, info = LlamaForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager",
        output_loading_info=True)
    if info.get("missing_keys") or info.get("unexpected_keys"):
        raise RuntimeError(f"{name}: HF loading info {info}")
    hf.eval()
    for i, (toks, _, _) in enumerate(seqs):
        with torch.no_grad():
            ref = hf(torch.tensor([toks])).logits[0].float()
        diff = float((ref - expected[f"logits.adaptive.{i}"]).abs().max())
        if diff > HF_ATOL:
            raise AssertionError(
                f"{name}: reference vs HF transformers max |diff| {diff:.3g} "
                f"> {HF_ATOL} on sequence {i}")
        expected[f"logits.hf.{i}"] = ref.contiguous()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate MoR parity fixtures.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--quick", action="store_true",
                    help="reserved; currently the same matrix")
    ap.add_argument("--only", nargs="*", default=None, help="case names to build")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny matrices; also keeps results thread-independent
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    entries = []
    for spec in case_specs():
        if args.only and spec["name"] not in args.only:
            continue
        t = time.time()
        entry = build_case(spec, args.out)
        entries.append(entry)
        margin = entry["min_routing_margin"]
        print(f"{entry['name']:24s} Nr={entry['Nr']} seed={entry['seed']} "
              f"margin={'-' if margin is None else f'{margin:.1e}'} "
              f"({time.time() - t:.2f}s)", flush=True)
    manifest = {"format_version": FORMAT_VERSION, "margin": MARGIN,
                "cases": entries}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(f"{len(entries)} cases written to {args.out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
