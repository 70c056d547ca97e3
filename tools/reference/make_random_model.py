"""Write a small random MoR (or vanilla Llama) model directory for tests.

The directory follows ``docs/model-format.md``: ``config.json`` plus
``model.safetensors`` (or N shards listed by ``model.safetensors.index.json``),
with the authors' tensor names. Each shared-layer tensor is written ONCE under
one of its aliases (chosen per tensor from the seed, so that loaders must
resolve aliases), unless ``write_all_aliases`` asks for duplicate copies.

Weight scales are chosen so that activations stay O(1) (hidden rms <= ~5),
logits are spread but not degenerate (tied models do not merely echo the input
token), norms are visibly different from 1 (a missing norm is
detectable) and router logits have a std of a few units (sigmoid scores far
from 0.5, every depth reached by some tokens under adaptive routing).

Usage (CLI)::

    make_random_model.py OUT --sharing middle_cycle --router-type expert_choice \
        --router-arch linear --kv-mode recursion_wise --num-recursions 3
"""

from __future__ import annotations

import argparse
import json
import os
import random

import torch
from safetensors.torch import save_file

DISK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
               "float16": torch.float16}

EMBED_STD = 0.35      # tied logits std ~ sqrt(d) * EMBED_STD
PROJ_GAIN = 1.6       # projections: std = PROJ_GAIN / sqrt(fan_in); smaller gains
#                       leave h dominated by the token's own embedding (the tied
#                       model then just predicts its input token)
MIDDLE_RMS = 3.5      # typical hidden rms after the unique first layer
NORM_JITTER = 0.1     # norms are 1 + NORM_JITTER * randn
ROUTER_LOGIT_STD = 3.0  # target std of router logits
VANILLA_LAYERS = 4


def num_layers_for(sharing: str, num_recursions: int, block_layers: int) -> int:
    """Unrolled layer count L for a sharing strategy (contract's layer plan)."""
    if sharing == "none":
        return VANILLA_LAYERS
    if sharing in ("cycle", "sequence"):
        return block_layers * num_recursions
    if sharing in ("middle_cycle", "middle_sequence"):
        return 2 + block_layers * num_recursions
    raise ValueError(f"unknown sharing {sharing!r}")


def shared_index(sharing: str, r: int, j: int, block_layers: int, nr: int) -> int:
    """Shared layer applied by recursion r (1-based) at slot j."""
    u = (r - 1) * block_layers + j
    return u % block_layers if sharing.endswith("cycle") else u // nr


def _layer_tensors(gen, d, inter, heads, kv_heads, head_dim) -> dict:
    """Random weights of one decoder layer, keyed by the contract's suffixes."""
    def proj(out_f, in_f):
        return torch.randn(out_f, in_f, generator=gen) * (PROJ_GAIN / in_f ** 0.5)

    def norm():
        return 1.0 + NORM_JITTER * torch.randn(d, generator=gen)

    return {
        "self_attn.q_proj.weight": proj(heads * head_dim, d),
        "self_attn.k_proj.weight": proj(kv_heads * head_dim, d),
        "self_attn.v_proj.weight": proj(kv_heads * head_dim, d),
        "self_attn.o_proj.weight": proj(d, heads * head_dim),
        "mlp.gate_proj.weight": proj(inter, d),
        "mlp.up_proj.weight": proj(inter, d),
        "mlp.down_proj.weight": proj(d, inter),
        "input_layernorm.weight": norm(),
        "post_attention_layernorm.weight": norm(),
    }


def _router_tensors(gen, prefix, arch, d, n_out, input_rms) -> dict:
    """Router weights scaled so the logits have std ~ ROUTER_LOGIT_STD."""
    if arch == "linear":
        std = ROUTER_LOGIT_STD / (d ** 0.5 * input_rms)
        return {f"{prefix}.router.weight": torch.randn(n_out, d, generator=gen) * std}
    gelu_rms = 0.65  # rms of GELU(x) for x ~ N(0, 1)
    std1 = 1.0 / (d ** 0.5 * input_rms)
    std2 = ROUTER_LOGIT_STD / ((2 * d) ** 0.5 * gelu_rms)
    return {
        f"{prefix}.router.0.weight": torch.randn(2 * d, d, generator=gen) * std1,
        f"{prefix}.router.2.weight": torch.randn(n_out, 2 * d, generator=gen) * std2,
    }


def _write_safetensors(out_dir: str, tensors: dict, shards: int) -> None:
    names = sorted(tensors)
    if shards <= 1:
        save_file({k: tensors[k] for k in names},
                  os.path.join(out_dir, "model.safetensors"),
                  metadata={"format": "pt"})
        return
    if shards > len(names):
        raise ValueError("more shards than tensors")
    weight_map, total = {}, 0
    per = -(-len(names) // shards)
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i * per:(i + 1) * per]
        save_file({k: tensors[k] for k in part}, os.path.join(out_dir, fname),
                  metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += tensors[k].numel() * tensors[k].element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
                  f, indent=2, sort_keys=True)


def make_random_model(out_dir, *, sharing, router_type="expert_choice",
                      router_arch="linear", kv_mode="recursion_wise",
                      num_recursions=2, hidden_size=64, num_heads=4,
                      num_kv_heads=2, intermediate_size=128, vocab_size=256,
                      block_layers=2, seed=0, disk_dtype="float32", shards=1,
                      tie=True, router_activation=None, hf_vanilla_names=False,
                      max_position_embeddings=512, head_dim=None,
                      write_all_aliases=False, router_alpha=None,
                      router_threshold=None, router_bias=True,
                      rope_theta=10000.0, rms_norm_eps=1e-5) -> dict:
    """Create ``out_dir`` with config.json and random safetensors weights.

    ``sharing`` is one of none/cycle/sequence/middle_cycle/middle_sequence;
    L is derived (middle_*: 2 + block_layers*Nr; cycle/sequence:
    block_layers*Nr; none: 4 layers, Nr ignored). ``hf_vanilla_names`` writes a
    plain HF Llama config (model_type llama, no MoR fields; sharing must be
    none). ``router_alpha`` / ``router_threshold`` / ``router_activation`` are
    written only when given (otherwise the contract's defaults apply).
    ``router_bias`` adds a random ``router_bias`` for token choice.
    Deterministic in ``seed``. Returns the config dict written.
    """
    if hf_vanilla_names and sharing != "none":
        raise ValueError("hf_vanilla_names requires sharing='none'")
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    pick = random.Random(seed)
    d, nr, B = hidden_size, num_recursions, block_layers
    hd = head_dim or d // num_heads
    L = num_layers_for(sharing, nr, B)
    middle = sharing.startswith("middle_")

    def layer():
        return _layer_tensors(gen, d, intermediate_size, num_heads, num_kv_heads, hd)

    tensors: dict[str, torch.Tensor] = {}
    tensors["model.embed_tokens.weight"] = (
        torch.randn(vocab_size, d, generator=gen) * EMBED_STD)
    tensors["model.norm.weight"] = 1.0 + NORM_JITTER * torch.randn(d, generator=gen)
    if not tie:
        tensors["lm_head.weight"] = torch.randn(vocab_size, d, generator=gen) * EMBED_STD

    if sharing == "none":
        for i in range(L):
            for t, w in layer().items():
                tensors[f"model.layers.{i}.{t}"] = w
    else:
        P = 1 if middle else 0
        if router_type == "expert_choice":
            def prefix(r, j):
                return f"model.layers.{P + r - 1}.block.{j}"
            last_idx = nr + 1
        elif router_type == "token_choice":
            def prefix(r, j):
                return f"model.layers.{P}.block_list.{r - 1}.{j}"
            last_idx = 2
        else:
            raise ValueError(f"unknown router_type {router_type!r}")
        if middle:
            for t, w in layer().items():
                tensors[f"model.layers.0.{t}"] = w
        aliases: dict[int, list[str]] = {}
        for r in range(1, nr + 1):
            for j in range(B):
                aliases.setdefault(shared_index(sharing, r, j, B, nr), []).append(
                    prefix(r, j))
        for s in sorted(aliases):
            for t, w in layer().items():
                names = aliases[s] if write_all_aliases else [pick.choice(aliases[s])]
                for name in names:
                    tensors[f"{name}.{t}"] = w.clone()
        if middle:
            for t, w in layer().items():
                tensors[f"model.layers.{last_idx}.{t}"] = w
        # Hidden rms entering the routers: embeddings (std EMBED_STD) or the
        # output of the unique first layer.
        in_rms = MIDDLE_RMS if middle else EMBED_STD
        if router_type == "expert_choice":
            for r in range(1, nr + 1):
                tensors.update(_router_tensors(
                    gen, f"model.layers.{P + r - 1}.mor_router", router_arch, d, 1,
                    in_rms))
        else:
            tensors.update(_router_tensors(
                gen, f"model.layers.{P}.mor_router", router_arch, d, nr, in_rms))
            if router_bias:
                tensors[f"model.layers.{P}.router_bias"] = (
                    0.1 * torch.randn(nr, generator=gen))

    cfg = {
        "architectures": ["LlamaForCausalLM"] if hf_vanilla_names else ["MorForCausalLM"],
        "model_type": "llama" if hf_vanilla_names else "mor",
        "hidden_size": d,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": L,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": disk_dtype,
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    if hf_vanilla_names:
        cfg.update({"attention_bias": False, "mlp_bias": False})
    else:
        cfg["sharing_strategy"] = sharing
        if sharing != "none":
            cfg.update({"num_recursions": nr, "router_type": router_type,
                        "router_arch": router_arch, "kv_mode": kv_mode})
            for key, val in (("router_activation", router_activation),
                             ("router_alpha", router_alpha),
                             ("router_threshold", router_threshold)):
                if val is not None:
                    cfg[key] = val
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    dt = DISK_DTYPES[disk_dtype]
    _write_safetensors(out_dir, {k: v.to(dt).contiguous() for k, v in tensors.items()},
                       shards)
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--sharing", required=True,
                    choices=["none", "cycle", "sequence", "middle_cycle",
                             "middle_sequence"])
    ap.add_argument("--router-type", default="expert_choice",
                    choices=["expert_choice", "token_choice"])
    ap.add_argument("--router-arch", default="linear", choices=["linear", "mlp"])
    ap.add_argument("--router-activation", default=None,
                    choices=["sigmoid", "softmax"])
    ap.add_argument("--kv-mode", default="recursion_wise",
                    choices=["recursion_wise", "recursive_sharing"])
    ap.add_argument("--num-recursions", type=int, default=2)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--num-kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--intermediate-size", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--block-layers", type=int, default=2)
    ap.add_argument("--max-position-embeddings", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk-dtype", default="float32", choices=sorted(DISK_DTYPES))
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--untied", action="store_true", help="write a separate lm_head")
    ap.add_argument("--hf-vanilla-names", action="store_true")
    ap.add_argument("--write-all-aliases", action="store_true")
    args = ap.parse_args(argv)
    cfg = make_random_model(
        args.out_dir, sharing=args.sharing, router_type=args.router_type,
        router_arch=args.router_arch, kv_mode=args.kv_mode,
        num_recursions=args.num_recursions, hidden_size=args.hidden_size,
        num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size, vocab_size=args.vocab_size,
        block_layers=args.block_layers, seed=args.seed, disk_dtype=args.disk_dtype,
        shards=args.shards, tie=not args.untied,
        router_activation=args.router_activation,
        hf_vanilla_names=args.hf_vanilla_names,
        max_position_embeddings=args.max_position_embeddings,
        head_dim=args.head_dim, write_all_aliases=args.write_all_aliases)
    print(json.dumps(cfg, indent=2))


if __name__ == "__main__":
    main()
