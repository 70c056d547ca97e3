"""Plain-PyTorch reference implementation of Mixture-of-Recursions (MoR) inference.

This module is the oracle the C++ engine is tested against. It follows
``docs/model-format.md`` to the letter and favours readability over speed: every
call to :meth:`MorReference.forward` runs ONE sequence as a whole (full causal
forward, no cache), and :meth:`MorReference.generate_greedy` simply recomputes
the full forward for every new token.

Semantics implemented (see the contract for details):

* vanilla (``sharing_strategy`` absent or ``"none"``): one recursion holding all
  L layers, no router, no gate: ``h <- Block(h)``.
* expert choice: one router per recursion, ``score_r = sigmoid(router_r(h))``,
  ``h <- h + alpha * score_r * Block_r(h)`` for the tokens taking recursion r.
* token choice: one router at the MoR entry; a token with depth D runs
  ``h <- Block_r(h)`` for r < D and ``h <- H1 + g * Block_D(h)`` at r = D.
* recursion-wise KV: at recursion r the tokens taking r attend causally only
  among themselves (original absolute positions for RoPE).
* recursive sharing: at r > 1 the queries attend to the depth-1 K/V of the same
  slot (every token, causal by position); no new K/V are computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors import safe_open

SHARING_STRATEGIES = ("none", "cycle", "sequence", "middle_cycle", "middle_sequence")
LAYER_TENSORS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


# ----------------------------------------------------------------------------
# Configuration and layer plan
# ----------------------------------------------------------------------------

@dataclass
class MorConfig:
    """Model configuration parsed from ``config.json`` (defaults per the contract)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    sharing_strategy: str = "none"
    num_recursions: int = 1
    router_type: str = "expert_choice"
    router_arch: str = "linear"
    router_activation: str = "sigmoid"
    router_alpha: float = 0.1
    router_threshold: float = 0.5
    kv_mode: str = "recursion_wise"
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, cfg: dict) -> "MorConfig":
        """Build a config from a parsed ``config.json``; validates the MoR fields."""
        d = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} not supported (only silu)")
        sharing = cfg.get("sharing_strategy") or "none"
        if sharing not in SHARING_STRATEGIES:
            raise ValueError(f"unknown sharing_strategy {sharing!r}")
        router_type = cfg.get("router_type") or "expert_choice"
        if router_type not in ("expert_choice", "token_choice"):
            raise ValueError(f"unknown router_type {router_type!r}")
        default_act = "softmax" if router_type == "token_choice" else "sigmoid"
        activation = cfg.get("router_activation") or default_act
        if router_type == "expert_choice" and activation != "sigmoid":
            raise ValueError("expert_choice requires router_activation sigmoid")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"unknown router_activation {activation!r}")
        default_alpha = 1.0 if (router_type == "token_choice"
                                and activation == "softmax") else 0.1
        alpha = cfg.get("router_alpha")
        nr = int(cfg.get("num_recursions") or 1) if sharing != "none" else 1
        c = cls(
            hidden_size=d,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab_size=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or d // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            sharing_strategy=sharing,
            num_recursions=nr,
            router_type=router_type,
            router_arch=cfg.get("router_arch") or "linear",
            router_activation=activation,
            router_alpha=float(default_alpha if alpha is None else alpha),
            router_threshold=float(cfg.get("router_threshold", 0.5)),
            kv_mode=cfg.get("kv_mode") or "recursion_wise",
            raw=dict(cfg),
        )
        if c.router_arch not in ("linear", "mlp"):
            raise ValueError(f"unknown router_arch {c.router_arch!r}")
        if c.kv_mode not in ("recursion_wise", "recursive_sharing"):
            raise ValueError(f"unknown kv_mode {c.kv_mode!r}")
        if c.num_attention_heads % c.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        _ = c.block_size  # validates the layer count
        return c

    @classmethod
    def from_file(cls, path: str) -> "MorConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @property
    def is_vanilla(self) -> bool:
        return self.sharing_strategy == "none"

    @property
    def is_middle(self) -> bool:
        return self.sharing_strategy.startswith("middle_")

    @property
    def block_size(self) -> int:
        """B: number of layers one recursion applies."""
        L, nr = self.num_hidden_layers, self.num_recursions
        if self.is_vanilla:
            return L
        shared = L - 2 if self.is_middle else L
        if shared <= 0 or shared % nr:
            raise ValueError(f"{self.sharing_strategy}: L={L} incompatible with Nr={nr}")
        return shared // nr

    def shared_index(self, r: int, j: int) -> int:
        """Shared-layer index applied by recursion r (1-based) at slot j."""
        if self.is_vanilla:
            return j
        u = (r - 1) * self.block_size + j  # index among the shared (middle) layers
        if self.sharing_strategy.endswith("cycle"):
            return u % self.block_size
        return u // self.num_recursions


# ----------------------------------------------------------------------------
# Weight loading
# ----------------------------------------------------------------------------

def _read_safetensors(model_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of a model directory (single file or index-listed shards)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(os.path.join(model_dir, name), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


class _WeightStore:
    """Resolves tensor names with the contract's alias rules and converts dtype."""

    def __init__(self, tensors: dict[str, torch.Tensor], dtype, device):
        self.tensors, self.dtype, self.device = tensors, dtype, device
        self.used: set[str] = set()

    def get(self, aliases: list[str], required: bool = True):
        """First alias present; every further alias present must match its shape."""
        present = [a for a in aliases if a in self.tensors]
        if not present:
            if required:
                raise KeyError(f"missing tensor, none of: {aliases[:4]}"
                               + (" ..." if len(aliases) > 4 else ""))
            return None
        first = self.tensors[present[0]]
        for a in present[1:]:
            if self.tensors[a].shape != first.shape:
                raise ValueError(f"alias {a} shape {tuple(self.tensors[a].shape)} "
                                 f"!= {present[0]} shape {tuple(first.shape)}")
        self.used.update(present)
        # clone(): fresh, aligned storage, so results never depend on where the
        # tensor sat in the file (SIMD paths vary with alignment).
        return first.to(device=self.device, dtype=self.dtype).clone()


@dataclass
class Layer:
    """Weights of one Llama decoder layer."""

    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor
    norm_in: torch.Tensor
    norm_post: torch.Tensor

    @classmethod
    def load(cls, store: _WeightStore, prefixes: list[str]) -> "Layer":
        return cls(*[store.get([f"{p}.{t}" for p in prefixes]) for t in LAYER_TENSORS])


@dataclass
class Router:
    """Router weights: ``linear`` uses w1 only; ``mlp`` is w1 -> GELU -> w2."""

    w1: torch.Tensor
    w2: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.w2 is None:
            return h @ self.w1.T
        return F.gelu(h @ self.w1.T, approximate="none") @ self.w2.T

    @classmethod
    def load(cls, store: _WeightStore, prefix: str, arch: str) -> "Router":
        if arch == "linear":
            return cls(store.get([f"{prefix}.router.weight"]))
        return cls(store.get([f"{prefix}.router.0.weight"]),
                   store.get([f"{prefix}.router.2.weight"]))


def load_model(model_dir: str, dtype=torch.float32, device="cpu") -> "MorReference":
    """Load ``config.json`` and the safetensors weights of ``model_dir``.

    Shared layers may appear under any non-empty subset of their aliases (one per
    (recursion, slot) applying them); each tensor is resolved independently by the
    first alias present in (recursion, slot) order. When the embeddings are tied,
    ``lm_head.weight`` is not needed (and ignored if present).
    """
    cfg = MorConfig.from_file(os.path.join(model_dir, "config.json"))
    store = _WeightStore(_read_safetensors(model_dir), dtype, device)
    nr, B = cfg.num_recursions, cfg.block_size
    P = 1 if cfg.is_middle else 0

    embed = store.get(["model.embed_tokens.weight"])
    norm = store.get(["model.norm.weight"])
    lm_head = embed if cfg.tie_word_embeddings else store.get(["lm_head.weight"])

    first = last = None
    routers: list[Router] = []
    router_bias = None
    if cfg.is_vanilla:
        blocks = [[Layer.load(store, [f"model.layers.{i}"])
                   for i in range(cfg.num_hidden_layers)]]
    else:
        if cfg.router_type == "expert_choice":
            def prefix(r, j):
                return f"model.layers.{P + r - 1}.block.{j}"
            last_idx = nr + 1
        else:
            def prefix(r, j):
                return f"model.layers.{P}.block_list.{r - 1}.{j}"
            last_idx = 2
        aliases: dict[int, list[str]] = {}
        for r in range(1, nr + 1):
            for j in range(B):
                aliases.setdefault(cfg.shared_index(r, j), []).append(prefix(r, j))
        shared = {s: Layer.load(store, names) for s, names in aliases.items()}
        blocks = [[shared[cfg.shared_index(r, j)] for j in range(B)]
                  for r in range(1, nr + 1)]
        if cfg.is_middle:
            first = Layer.load(store, ["model.layers.0"])
            last = Layer.load(store, [f"model.layers.{last_idx}"])
        if cfg.router_type == "expert_choice":
            routers = [Router.load(store, f"model.layers.{P + r - 1}.mor_router",
                                   cfg.router_arch) for r in range(1, nr + 1)]
        else:
            routers = [Router.load(store, f"model.layers.{P}.mor_router",
                                   cfg.router_arch)]
            router_bias = store.get([f"model.layers.{P}.router_bias"], required=False)
    if cfg.tie_word_embeddings:
        store.used.add("lm_head.weight")
    model = MorReference(cfg, embed, norm, lm_head, blocks, first, last,
                         routers, router_bias, dtype, device)
    model.unused_keys = sorted(set(store.tensors) - store.used)
    return model


# ----------------------------------------------------------------------------
# Math
# ----------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """``w * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype)``."""
    x32 = x.to(torch.float32)
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return w * y.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class MorReference:
    """A loaded MoR (or vanilla Llama) model; see module docstring for semantics."""

    def __init__(self, cfg: MorConfig, embed, norm, lm_head, blocks, first, last,
                 routers, router_bias, dtype, device):
        self.cfg = cfg
        self.embed, self.norm, self.lm_head = embed, norm, lm_head
        self.blocks: list[list[Layer]] = blocks  # blocks[r-1][j]
        self.first, self.last = first, last
        self.routers: list[Router] = routers
        self.router_bias = router_bias
        self.dtype, self.device = dtype, device
        self.unused_keys: list[str] = []
        hd = cfg.head_dim
        self.inv_freq = 1.0 / (cfg.rope_theta ** (
            torch.arange(0, hd, 2, dtype=torch.int64).to(torch.float32) / hd))

    # ---- building blocks -------------------------------------------------

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Apply RoPE to x [m, heads, hd] at absolute positions pos [m]."""
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(x.dtype)[:, None, :]
        sin = emb.sin().to(x.dtype)[:, None, :]
        return x * cos + rotate_half(x) * sin

    def _layer(self, layer: Layer, x: torch.Tensor, pos: torch.Tensor, kv=None):
        """One decoder layer on rows x [m, d] at positions pos [m].

        Without ``kv`` the layer computes its own K/V from x and attends causally
        among the given rows. With ``kv = (k, v, key_pos)`` it computes only its
        queries and attends to those entries with ``key_pos <= pos``. Returns
        ``(out, (k, v, key_pos))`` where K/V are post-RoPE, [m, kv_heads, hd].
        """
        cfg = self.cfg
        m = x.shape[0]
        H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        n1 = rms_norm(x, layer.norm_in, cfg.rms_norm_eps)
        q = self._rope((n1 @ layer.wq.T).view(m, H, hd), pos)
        if kv is None:
            k = self._rope((n1 @ layer.wk.T).view(m, Hkv, hd), pos)
            v = (n1 @ layer.wv.T).view(m, Hkv, hd)
            kv = (k, v, pos)
        k, v, key_pos = kv
        group = H // Hkv  # query head i uses kv head i // group
        kh = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, mk, hd]
        vh = v.repeat_interleave(group, dim=1).transpose(0, 1)
        att = (q.transpose(0, 1) @ kh.transpose(1, 2)) * (hd ** -0.5)  # [H, m, mk]
        allowed = key_pos[None, :] <= pos[:, None]
        att = att.masked_fill(~allowed[None], float("-inf"))
        att = torch.softmax(att, dim=-1, dtype=torch.float32).to(x.dtype)
        o = (att @ vh).transpose(0, 1).reshape(m, H * hd)
        h = x + o @ layer.wo.T
        n2 = rms_norm(h, layer.norm_post, cfg.rms_norm_eps)
        out = h + (F.silu(n2 @ layer.w_gate.T) * (n2 @ layer.w_up.T)) @ layer.w_down.T
        return out, kv

    def _full_layer(self, layer: Layer, h: torch.Tensor, pos: torch.Tensor):
        return self._layer(layer, h, pos)[0]

    def _block(self, r: int, h: torch.Tensor, pos: torch.Tensor,
               idx: torch.Tensor, shared_kv: list | None) -> torch.Tensor:
        """Apply recursion r (1-based) to the rows ``idx`` of h; returns Block_r(h[idx]).

        recursion_wise (or r == 1): the rows attend causally among themselves.
        recursive_sharing, r > 1: each slot attends to ``shared_kv[j]`` (depth-1
        K/V of every token). At r == 1 with recursive sharing, ``shared_kv`` is
        filled with the depth-1 K/V of each slot.
        """
        x, p = h[idx], pos[idx]
        sharing = self.cfg.kv_mode == "recursive_sharing"
        for j, layer in enumerate(self.blocks[r - 1]):
            if sharing and r > 1:
                x, _ = self._layer(layer, x, p, kv=shared_kv[j])
            else:
                x, kv = self._layer(layer, x, p)
                if sharing and r == 1:
                    shared_kv.append(kv)
        return x

    # ---- forward ------------------------------------------------------------

    @torch.no_grad()
    def forward(self, token_ids: list[int], depth: int | None = None):
        """Full causal forward of ONE sequence (no cache).

        ``depth`` None selects adaptive routing, an int d in 1..Nr a fixed depth.
        Returns ``(logits [n, vocab] float32, depths [n] int64, scores [n, Nr]
        float32)``; scores hold NaN where the router was not evaluated (always NaN
        for vanilla models).
        """
        cfg = self.cfg
        nr = cfg.num_recursions
        n = len(token_ids)
        if n == 0:
            raise ValueError("empty sequence")
        if n > cfg.max_position_embeddings:
            raise ValueError("sequence longer than max_position_embeddings")
        if depth is not None and not 1 <= depth <= nr:
            raise ValueError(f"depth {depth} outside 1..{nr}")
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        if int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size:
            raise ValueError("token id out of range")
        pos = torch.arange(n, device=self.device)
        h = self.embed[ids]
        scores = torch.full((n, nr), float("nan"), dtype=torch.float32)

        if cfg.is_vanilla:
            for layer in self.blocks[0]:
                h = self._full_layer(layer, h, pos)
            depths = torch.ones(n, dtype=torch.int64)
        else:
            if self.first is not None:
                h = self._full_layer(self.first, h, pos)
            if cfg.router_type == "expert_choice":
                h, depths = self._expert_choice(h, pos, depth, scores)
            else:
                h, depths = self._token_choice(h, pos, depth, scores)
            if self.last is not None:
                h = self._full_layer(self.last, h, pos)

        h = rms_norm(h, self.norm, cfg.rms_norm_eps)
        logits = (h @ self.lm_head.T).to(torch.float32).cpu()
        return logits, depths.cpu(), scores

    def _expert_choice(self, h, pos, depth, scores):
        """Expert-choice recursions; fills ``scores`` in place."""
        cfg = self.cfg
        n = h.shape[0]
        depths = torch.zeros(n, dtype=torch.int64, device=self.device)
        took_prev = torch.ones(n, dtype=torch.bool, device=self.device)
        shared_kv: list = []
        for r in range(1, cfg.num_recursions + 1):
            score = torch.sigmoid(self.routers[r - 1](h)[:, 0])
            # Evaluated for r <= depth + 1, i.e. for tokens that took r - 1.
            evaluated = took_prev if depth is None else (
                torch.full_like(took_prev, r <= depth + 1))
            scores[evaluated.cpu(), r - 1] = score[evaluated].float().cpu()
            if depth is not None:
                take = torch.full_like(took_prev, r <= depth)
            elif r == 1:
                take = took_prev
            else:
                take = took_prev & (score >= cfg.router_threshold)
            idx = take.nonzero()[:, 0]
            if r == 1 or len(idx) > 0:
                out = self._block(r, h, pos, idx, shared_kv)
                gate = (cfg.router_alpha * score[idx]).to(h.dtype)[:, None]
                h = h.clone()
                h[idx] = h[idx] + gate * out
            depths[take] = r
            took_prev = take
        return h, depths

    def _token_choice(self, h, pos, depth, scores):
        """Token-choice recursions; fills ``scores`` (router probs) in place."""
        cfg = self.cfg
        nr = cfg.num_recursions
        n = h.shape[0]
        h1 = h
        logits = self.routers[0](h1)
        if cfg.router_activation == "softmax":
            probs = torch.softmax(logits, dim=-1)
        else:
            probs = torch.sigmoid(logits)
        scores[:] = probs.float().cpu()
        if depth is None:
            biased = probs if self.router_bias is None else probs + self.router_bias
            depths = 1 + torch.argmax(biased, dim=-1)  # ties: lowest depth
        else:
            depths = torch.full((n,), depth, dtype=torch.int64, device=self.device)
        g = cfg.router_alpha * probs.gather(1, (depths - 1)[:, None])  # [n, 1]
        shared_kv: list = []
        for r in range(1, nr + 1):
            idx = (depths >= r).nonzero()[:, 0]
            if len(idx) == 0 and r > 1:
                break
            out = self._block(r, h, pos, idx, shared_kv)
            final = depths[idx] == r
            h = h.clone()
            h[idx] = torch.where(final[:, None],
                                 h1[idx] + g[idx].to(h.dtype) * out, out)
        return h, depths

    @torch.no_grad()
    def generate_greedy(self, token_ids: list[int], n_new: int,
                        depth: int | None = None) -> list[int]:
        """Greedy decoding by recomputing the full forward for every new token.

        Returns only the ``n_new`` generated ids (no early stop on eos).
        """
        seq = list(token_ids)
        out = []
        for _ in range(n_new):
            logits, _, _ = self.forward(seq, depth)
            nxt = int(torch.argmax(logits[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out


def _main():
    import argparse
    ap = argparse.ArgumentParser(description="Run the MoR reference on token ids.")
    ap.add_argument("model_dir")
    ap.add_argument("tokens", nargs="+", type=int)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--new", type=int, default=0, help="greedy tokens to generate")
    args = ap.parse_args()
    model = load_model(args.model_dir)
    logits, depths, scores = model.forward(args.tokens, args.depth)
    print("depths:", depths.tolist())
    print("argmax:", logits.argmax(-1).tolist())
    print("scores:", scores.tolist())
    if args.new:
        print("greedy:", model.generate_greedy(args.tokens, args.new, args.depth))


if __name__ == "__main__":
    _main()
