"""Self-check of the MoR reference (no pytest): exit 0 when all checks pass.

Run: ``.venv/bin/python tools/reference/test_reference.py``. Prints one line per
check and ``N passed, N failed``.

Checks:
* vanilla reference == HF transformers LlamaForCausalLM (<= 1e-4), including an
  explicit head_dim and a non-HF (model_type mor, sharing none) config;
* an independent, mask-based implementation built from HF Llama modules (full
  rows, inactive keys masked out, weights read by their direct names from a model
  written with all aliases) agrees with the reference for every strategy x router
  x kv mode, adaptive and fixed depths;
* causality: forward(tokens)[:k] == forward(tokens[:k]) for every k;
* fixed / adaptive routing invariants (depths, NaN pattern of scores, threshold
  0 == fixed Nr, threshold > 1 == fixed 1, token-choice bias forcing a depth);
* loader: shards == single file, all aliases == one alias, bf16/f16 on disk,
  errors on a missing tensor and on alias shape mismatches;
* generate_greedy consistent with one forward; bf16 compute runs;
* fixture generation is deterministic and matches the reference.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_random_model import make_random_model  # noqa: E402
from mor_reference import LAYER_TENSORS, MorConfig, load_model  # noqa: E402

ATOL = 5e-5           # same math, different structure: fp32 noise on |logits| ~ 20
CAUSAL_ATOL = 1e-4    # prefix vs full: different matmul shapes, fp32 noise
TMP = tempfile.mkdtemp(prefix="mor_ref_test_")
CHECKS: list = []
MATRIX = [dict(sharing=s, router_type=rt, kv_mode=kv, router_arch=arch,
               num_recursions=nr, seed=100 + i)
          for i, (s, rt, kv, (arch, nr)) in enumerate(itertools.product(
              ("cycle", "sequence", "middle_cycle", "middle_sequence"),
              ("expert_choice", "token_choice"),
              ("recursion_wise", "recursive_sharing"),
              (("linear", 3), ("mlp", 2))))]


def check(name):
    """Decorator: register a check (run by main)."""
    def register(fn):
        CHECKS.append((name, fn))
        return fn
    return register


def model_dir(tag: str, **kw) -> str:
    path = os.path.join(TMP, tag)
    if not os.path.exists(path):
        make_random_model(path, **kw)
    return path


def tag_of(kw: dict) -> str:
    return "_".join(str(v) for v in kw.values())


def tokens(n: int, seed: int, vocab: int = 256) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def same_outputs(a, b, what: str, atol: float = ATOL) -> None:
    """Assert two (logits, depths, scores) triples agree."""
    la, da, sa = a
    lb, db, sb = b
    assert torch.equal(da, db), f"{what}: depths {da.tolist()} != {db.tolist()}"
    assert torch.equal(torch.isnan(sa), torch.isnan(sb)), f"{what}: score NaN pattern"
    m = ~torch.isnan(sa)
    assert torch.allclose(sa[m], sb[m], atol=atol, rtol=0), f"{what}: scores differ"
    diff = float((la - lb).abs().max())
    assert diff <= atol, f"{what}: logits differ by {diff:.3g}"


def policies(nr: int):
    return [None] + list(range(1, nr + 1))


# ----------------------------------------------------------------------------
# Independent mask-based implementation built from HF Llama modules
# ----------------------------------------------------------------------------

class MaskedMor:
    """Second implementation: every recursion runs on ALL rows; keys of tokens not
    taking the recursion are masked out and only active rows are updated.
    Reads weights by direct (r, j) names: the model must hold all aliases."""

    def __init__(self, path: str):
        from transformers import LlamaConfig
        from transformers.models.llama import modeling_llama as ml
        self.ml = ml
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        self.cfg = cfg = MorConfig.from_dict(raw)
        self.w = {k: v.float() for k, v in load_file(
            os.path.join(path, "model.safetensors")).items()}
        self.hf_cfg = LlamaConfig(
            hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
            vocab_size=cfg.vocab_size, num_hidden_layers=1,
            max_position_embeddings=cfg.max_position_embeddings)
        self.rope = ml.LlamaRotaryEmbedding(self.hf_cfg)
        P = 1 if cfg.is_middle else 0
        ec = cfg.router_type == "expert_choice"
        self.blocks = [[self._layer(f"model.layers.{P + r - 1}.block.{j}" if ec else
                                    f"model.layers.{P}.block_list.{r - 1}.{j}")
                        for j in range(cfg.block_size)]
                       for r in range(1, cfg.num_recursions + 1)]
        self.first = self._layer("model.layers.0") if P else None
        self.last = self._layer(f"model.layers.{cfg.num_recursions + 1 if ec else 2}"
                                ) if P else None
        names = ([f"model.layers.{P + r}.mor_router" for r in range(cfg.num_recursions)]
                 if ec else [f"model.layers.{P}.mor_router"])
        self.routers = [self._router(n) for n in names]
        self.bias = self.w.get(f"model.layers.{P}.router_bias")
        self.norm = ml.LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.norm.weight.data = self.w["model.norm.weight"]

    def _layer(self, prefix):
        layer = self.ml.LlamaDecoderLayer(self.hf_cfg, layer_idx=0).eval()
        layer.load_state_dict({t: self.w[f"{prefix}.{t}"] for t in LAYER_TENSORS})
        return layer

    def _router(self, prefix):
        if self.cfg.router_arch == "linear":
            w = self.w[f"{prefix}.router.weight"]
            return lambda h: h @ w.T
        seq = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.GELU(),
                                  torch.nn.Linear(1, 1, bias=False))
        seq[0].weight.data = self.w[f"{prefix}.router.0.weight"]
        seq[2].weight.data = self.w[f"{prefix}.router.2.weight"]
        return seq

    def _run_layer(self, layer, x, cos_sin, allowed, kv=None):
        """x [n, d]; allowed [n, n] (query, key); kv = depth-1 (k, v) to reuse."""
        ml, att = self.ml, layer.self_attn
        n, hd = x.shape[0], self.cfg.head_dim
        n1 = layer.input_layernorm(x[None])
        q = att.q_proj(n1).view(1, n, -1, hd).transpose(1, 2)
        k = att.k_proj(n1).view(1, n, -1, hd).transpose(1, 2)
        v = att.v_proj(n1).view(1, n, -1, hd).transpose(1, 2)
        q, k = ml.apply_rotary_pos_emb(q, k, *cos_sin)
        if kv is not None:
            k, v = kv
        allowed = allowed | torch.eye(n, dtype=torch.bool)  # no empty rows (discarded)
        mask = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        o, _ = ml.eager_attention_forward(att, q, k, v, mask[None, None],
                                          scaling=hd ** -0.5)
        h = x[None] + att.o_proj(o.reshape(1, n, -1))
        out = h + layer.mlp(layer.post_attention_layernorm(h))
        return out[0], (k, v)

    def _recursion(self, r, h, cos_sin, active, shared):
        n = h.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        sharing = self.cfg.kv_mode == "recursive_sharing"
        x = h
        for j, layer in enumerate(self.blocks[r - 1]):
            if sharing and r > 1:
                x, _ = self._run_layer(layer, x, cos_sin, causal, kv=shared[j])
            else:
                x, kv = self._run_layer(layer, x, cos_sin, causal & active[None, :])
                if r == 1:
                    shared.append(kv)
        return x

    @torch.no_grad()
    def forward(self, toks, depth=None):
        cfg, n, nr = self.cfg, len(toks), self.cfg.num_recursions
        h = self.w["model.embed_tokens.weight"][torch.tensor(toks)]
        cos_sin = self.rope(h[None], torch.arange(n)[None])
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        if self.first is not None:
            h = self._run_layer(self.first, h, cos_sin, causal)[0]
        scores = torch.full((n, nr), float("nan"))
        depths = torch.zeros(n, dtype=torch.int64)
        shared: list = []
        if cfg.router_type == "expert_choice":
            prev = torch.ones(n, dtype=torch.bool)
            for r in range(1, nr + 1):
                s = torch.sigmoid(self.routers[r - 1](h)[:, 0])
                if depth is None:
                    scores[prev, r - 1] = s[prev]
                    act = prev & ((s >= cfg.router_threshold) | (r == 1))
                else:
                    scores[:, r - 1] = s if r <= depth + 1 else float("nan")
                    act = torch.full((n,), r <= depth)
                out = self._recursion(r, h, cos_sin, act, shared)
                h = torch.where(act[:, None], h + cfg.router_alpha * s[:, None] * out, h)
                depths += act.long()
                prev = act
        else:
            h1, logits = h, self.routers[0](h)
            probs = (logits.softmax(-1) if cfg.router_activation == "softmax"
                     else logits.sigmoid())
            scores[:] = probs
            biased = probs + (self.bias if self.bias is not None else 0)
            depths = (biased.argmax(-1) + 1) if depth is None else torch.full((n,), depth)
            g = cfg.router_alpha * probs[torch.arange(n), depths - 1]
            for r in range(1, nr + 1):
                act = depths >= r
                out = self._recursion(r, h, cos_sin, act, shared)
                h = torch.where((depths == r)[:, None], h1 + g[:, None] * out,
                                torch.where(act[:, None], out, h))
        if self.last is not None:
            h = self._run_layer(self.last, h, cos_sin, causal)[0]
        emb = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        if cfg.tie_word_embeddings:
            emb = self.w["model.embed_tokens.weight"]
        return self.norm(h) @ emb.T, depths, scores


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------

def hf_logits(path, toks):
    import transformers
    from transformers import LlamaForCausalLM
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                          attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(torch.tensor([toks])).logits[0]


@check("vanilla reference == HF transformers (<= 1e-4)")
def _():
    variants = (("van_a", dict(seed=1)), ("van_b", dict(seed=2, head_dim=32)),
                ("van_c", dict(seed=3, num_kv_heads=4, tie=False, rope_theta=1000.0,
                               rms_norm_eps=1e-6)))
    for tag, kw in variants:
        path = model_dir(tag, sharing="none", hf_vanilla_names=True, **kw)
        model = load_model(path)
        for n in (1, 5, 40):
            toks = tokens(n, n)
            diff = float((model.forward(toks)[0] - hf_logits(path, toks)).abs().max())
            assert diff <= 1e-4, f"{tag} n={n}: {diff}"


@check("vanilla with model_type mor / sharing none == HF names config")
def _():
    a = load_model(model_dir("van_a", sharing="none", hf_vanilla_names=True, seed=1))
    b = load_model(model_dir("van_mor", sharing="none", seed=1))
    assert b.cfg.is_vanilla and b.cfg.num_recursions == 1
    toks = tokens(20, 7)
    same_outputs(a.forward(toks), b.forward(toks), "vanilla configs", atol=0)
    assert torch.isnan(b.forward(toks)[2]).all()


@check("independent mask-based HF-module implementation == reference (matrix)")
def _():
    for kw in MATRIX:
        ref = load_model(model_dir(tag_of(kw), **kw))
        alt = MaskedMor(model_dir(tag_of(kw) + "_all", write_all_aliases=True, **kw))
        for seq_seed, n in ((1, 9), (2, 31)):
            toks = tokens(n, seq_seed)
            for d in policies(ref.cfg.num_recursions):
                same_outputs(ref.forward(toks, d), alt.forward(toks, d),
                             f"{tag_of(kw)} depth={d} n={n}")


@check("causality: forward(tokens)[:k] == forward(tokens[:k]) for all k")
def _():
    for kw in MATRIX[::3]:
        model = load_model(model_dir(tag_of(kw), **kw))
        toks = tokens(13, 3)
        for d in (None, model.cfg.num_recursions):
            full = model.forward(toks, d)
            for k in range(1, len(toks) + 1):
                same_outputs(tuple(t[:k] for t in full), model.forward(toks[:k], d),
                             f"{tag_of(kw)} depth={d} k={k}", atol=CAUSAL_ATOL)


@check("fixed depth d: depths == d, scores evaluated for r <= min(d+1, Nr)")
def _():
    for kw in MATRIX:
        model = load_model(model_dir(tag_of(kw), **kw))
        nr = model.cfg.num_recursions
        for d in range(1, nr + 1):
            _, depths, scores = model.forward(tokens(11, d), d)
            assert (depths == d).all()
            if model.cfg.router_type == "expert_choice":
                ev = torch.arange(1, nr + 1) <= min(d + 1, nr)
                assert torch.equal(~torch.isnan(scores), ev[None].expand_as(scores))
            else:
                assert not torch.isnan(scores).any()
                if model.cfg.router_activation == "softmax":
                    assert torch.allclose(scores.sum(-1), torch.ones(len(depths)))


@check("adaptive: depths consistent with scores (threshold / argmax+bias)")
def _():
    for kw in MATRIX:
        model = load_model(model_dir(tag_of(kw), **kw))
        cfg, nr = model.cfg, model.cfg.num_recursions
        _, depths, scores = model.forward(tokens(40, 5))
        if cfg.router_type == "expert_choice":
            for t in range(len(depths)):
                dep = 1
                while dep < nr and scores[t, dep] >= cfg.router_threshold:
                    dep += 1
                assert depths[t] == dep, f"token {t}"
                ev = torch.arange(1, nr + 1) <= min(dep + 1, nr)
                assert torch.equal(~torch.isnan(scores[t]), ev)
        else:
            bias = model.router_bias if model.router_bias is not None else 0
            assert torch.equal(depths, 1 + (scores + bias).argmax(-1))


@check("expert choice: threshold 0 == fixed Nr, threshold 1.1 == fixed 1")
def _():
    for kw in MATRIX:
        if kw["router_type"] != "expert_choice":
            continue
        model = load_model(model_dir(tag_of(kw), **kw))
        nr, toks = model.cfg.num_recursions, tokens(17, 9)
        model.cfg.router_threshold = 0.0
        same_outputs(model.forward(toks), model.forward(toks, nr), "thr 0")
        model.cfg.router_threshold = 1.1
        same_outputs(model.forward(toks), model.forward(toks, 1), "thr 1.1")


@check("token choice: router_bias forcing depth d == fixed d")
def _():
    for kw in MATRIX:
        if kw["router_type"] != "token_choice":
            continue
        model = load_model(model_dir(tag_of(kw), **kw))
        toks = tokens(17, 9)
        for d in range(1, model.cfg.num_recursions + 1):
            model.router_bias = torch.zeros(model.cfg.num_recursions)
            model.router_bias[d - 1] = 10.0
            same_outputs(model.forward(toks), model.forward(toks, d), f"bias d={d}")


@check("loader: shards / all aliases / one alias give identical outputs")
def _():
    kw = dict(sharing="middle_sequence", router_type="expert_choice", kv_mode="recursion_wise",
              router_arch="mlp", num_recursions=3, seed=77)
    base = load_model(model_dir("ld_base", **kw))
    toks = tokens(25, 1)
    for tag, extra in (("ld_shard", dict(shards=4)), ("ld_all", dict(write_all_aliases=True)),
                       ("ld_shard_all", dict(shards=3, write_all_aliases=True))):
        path = model_dir(tag, **kw, **extra)
        if "shard" in tag:
            assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
        other = load_model(path)
        assert not other.unused_keys, other.unused_keys
        for d in policies(3):
            same_outputs(base.forward(toks, d), other.forward(toks, d), tag, atol=0)


@check("loader: bf16 / f16 on disk == f32 weights rounded")
def _():
    kw = dict(sharing="cycle", router_type="token_choice", kv_mode="recursive_sharing",
              router_arch="linear", num_recursions=2, seed=5, tie=False)
    f32 = load_model(model_dir("dt_f32", **kw))
    for dt, tdt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        low = load_model(model_dir(f"dt_{dt}", disk_dtype=dt, **kw))
        assert low.embed.dtype == torch.float32
        for a, b in ((f32.embed, low.embed), (f32.lm_head, low.lm_head),
                     (f32.blocks[1][0].wq, low.blocks[1][0].wq),
                     (f32.routers[0].w1, low.routers[0].w1)):
            assert torch.equal(a.to(tdt).float(), b), dt
        assert torch.equal(f32.router_bias.to(tdt).float(), low.router_bias)


@check("loader: missing tensor and alias shape mismatch are errors; lm_head untied")
def _():
    kw = dict(sharing="cycle", router_type="expert_choice", kv_mode="recursion_wise",
              router_arch="linear", num_recursions=2, seed=9)
    path = model_dir("err_all", write_all_aliases=True, **kw)
    tensors = load_file(os.path.join(path, "model.safetensors"))
    bad = os.path.join(TMP, "err_bad")
    os.makedirs(bad, exist_ok=True)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(cfg, f)
    t2 = dict(tensors)
    t2["model.layers.1.block.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(t2, os.path.join(bad, "model.safetensors"))
    try:
        load_model(bad)
        raise AssertionError("shape mismatch not detected")
    except ValueError:
        pass
    t3 = {k: v for k, v in tensors.items() if ".mlp.up_proj." not in k}
    save_file(t3, os.path.join(bad, "model.safetensors"))
    try:
        load_model(bad)
        raise AssertionError("missing tensor not detected")
    except KeyError:
        pass
    cfg["tie_word_embeddings"] = False
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file(tensors, os.path.join(bad, "model.safetensors"))
    try:
        load_model(bad)
        raise AssertionError("missing untied lm_head not detected")
    except KeyError:
        pass


@check("generate_greedy agrees with one forward over prompt + generation")
def _():
    for kw in (MATRIX[0], MATRIX[13], MATRIX[22]):
        model = load_model(model_dir(tag_of(kw), **kw))
        prompt = tokens(6, 11)
        for d in (None, 1):
            gen = model.generate_greedy(prompt, 8, depth=d)
            logits = model.forward(prompt + gen, d)[0]
            assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == gen


@check("bf16 compute dtype runs and tracks fp32")
def _():
    kw = MATRIX[20]
    path = model_dir(tag_of(kw), **kw)
    a = load_model(path).forward(tokens(20, 2), 2)[0]
    b = load_model(path, dtype=torch.bfloat16).forward(tokens(20, 2), 2)[0]
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert corr > 0.98, float(corr)


@check("Nr = 1 MoR model: adaptive == fixed 1")
def _():
    for rt in ("expert_choice", "token_choice"):
        path = model_dir(f"nr1_{rt}", sharing="middle_cycle", router_type=rt,
                         kv_mode="recursion_wise", router_arch="linear",
                         num_recursions=1, seed=4)
        model = load_model(path)
        toks = tokens(12, 1)
        same_outputs(model.forward(toks), model.forward(toks, 1), rt, atol=0)


@check("fixtures: deterministic and equal to the reference")
def _():
    import make_parity_fixtures as mpf
    specs = {s["name"]: s for s in mpf.case_specs()}
    for name in ("middle_cycle_tc_rs", "bf16"):
        outs = []
        for k in range(2):
            out = os.path.join(TMP, f"fix{k}")
            entry = mpf.build_case(specs[name], out)
            with open(os.path.join(out, entry["expected"]), "rb") as f:
                outs.append(f.read())
        assert outs[0] == outs[1], f"{name}: fixture bytes differ between runs"
        model = load_model(os.path.join(out, entry["model_dir"]))
        with safe_open(os.path.join(out, entry["expected"]), framework="pt") as f:
            exp = {k: f.get_tensor(k) for k in f.keys()}
        for i in range(entry["num_sequences"]):
            toks = exp[f"tokens.{i}"].tolist()
            for p in entry["policies"]:
                d = None if p == "adaptive" else int(p[5:])
                lg, dp, sc = model.forward(toks, d)
                same_outputs((lg, dp, sc), (exp[f"logits.{p}.{i}"],
                                            exp[f"depths.{p}.{i}"].long(),
                                            exp[f"scores.{p}.{i}"]), name, atol=0)


def main() -> int:
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    passed = failed = 0
    for name, fn in CHECKS:
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"PASS {name} ({time.time() - t0:.1f}s)", flush=True)
        except Exception:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name} ({time.time() - t0:.1f}s)", flush=True)
            traceback.print_exc()
    shutil.rmtree(TMP, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
