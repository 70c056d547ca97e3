"""Trainable MoR (and vanilla Llama) language model for tools/train.

The math is the serving contract's (docs/model-format.md, mor-spec.md; the
inference implementation is tools/reference/mor_reference.py): Llama decoder
layers (fp32 RMSNorm, RoPE with rotate_half, GQA, SwiGLU), middle_cycle
parameter sharing (a unique first and last layer around B shared layers applied
Nr times), expert-choice routing with recursion-wise K/V, a tied LM head.

Training follows the paper's final expert-choice recipe (mor-spec.md section 4):
one linear router per recursion (no bias), g = alpha * sigmoid(logit);
capacity (Nr - r + 1) / Nr of the sequence at recursion r, chosen by top-k
among the tokens still active after recursion r - 1 (hierarchical filtering);
selected tokens get h <- h + g * Block_r(h) (Block_r includes its residual),
the others keep h; the selected tokens attend causally only among themselves
at their original positions (recursion-wise caching); an auxiliary BCE loss on
the router logits with target 1 inside the top-k. At inference the server uses
the causal rule (continue iff sigmoid >= 0.5), which the BCE loss trains the
router to agree with.

``export(out_dir)`` writes config.json + model.safetensors with the authors'
tensor names (each shared layer once), which the C++ server and the Python
reference both load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


@dataclass
class LmConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_heads: int = 4
    num_kv_heads: int = 2
    block_layers: int = 2        # B: layers in the shared block
    num_recursions: int = 3      # Nr; 0 means a vanilla model of `vanilla_layers`
    vanilla_layers: int = 0
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    router_alpha: float = 0.1
    bos_token_id: int = 0
    eos_token_id: int = 0

    @property
    def is_vanilla(self) -> bool:
        return self.num_recursions == 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_hidden_layers(self) -> int:
        if self.is_vanilla:
            return self.vanilla_layers
        return 2 + self.block_layers * self.num_recursions


class RmsNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class DecoderLayer(nn.Module):
    """One Llama layer over [batch, n, d] rows sorted by position (causal)."""

    def __init__(self, cfg: LmConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        self.gate_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, d, bias=False)
        self.input_layernorm = RmsNorm(d, cfg.rms_norm_eps)
        self.post_attention_layernorm = RmsNorm(d, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        cfg = self.cfg
        b, n, _ = x.shape
        hd = cfg.head_dim
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, n, cfg.num_heads, hd).transpose(1, 2)
        k = self.k_proj(h).view(b, n, cfg.num_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(h).view(b, n, cfg.num_kv_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o_proj(o.transpose(1, 2).reshape(b, n, cfg.num_heads * hd))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class MorLm(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        if cfg.is_vanilla:
            self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.vanilla_layers))
        else:
            self.first = DecoderLayer(cfg)
            self.block = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.block_layers))
            self.last = DecoderLayer(cfg)
            self.routers = nn.ModuleList(
                nn.Linear(d, 1, bias=False) for _ in range(cfg.num_recursions))
        self.norm = RmsNorm(d, cfg.rms_norm_eps)
        hd = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (
            torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _rope(self, pos: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [batch, 1, n, hd] for positions pos [batch, n]."""
        freqs = pos.float()[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]

    def forward(self, ids: torch.Tensor, depth: int | None = None):
        """Training forward over [batch, n] ids (top-k routing).

        ``depth`` (fixed-depth training, not used by the recipe) routes every
        token through recursions 1..depth. Returns (logits [batch, n, vocab],
        aux_loss, per-recursion selected fractions).
        """
        cfg = self.cfg
        b, n = ids.shape
        pos = torch.arange(n, device=ids.device).expand(b, n)
        h = self.embed_tokens(ids)
        cos, sin = self._rope(pos, h.dtype)
        aux = h.new_zeros((), dtype=torch.float32)
        if cfg.is_vanilla:
            for layer in self.layers:
                h = layer(h, cos, sin)
            return self._head(h), aux
        h = self.first(h, cos, sin)
        active = pos  # [b, k] positions still active, sorted
        nr = cfg.num_recursions
        for r in range(1, nr + 1):
            if depth is not None and r > depth:
                break
            cand = torch.gather(h, 1, active[..., None].expand(-1, -1, h.shape[-1]))
            logit = self.routers[r - 1](cand)[..., 0].float()  # [b, k_prev]
            k = n if depth is not None else max(1, int((nr - r + 1) / nr * n))
            k = min(k, active.shape[1])
            top = torch.topk(logit, k, dim=1, sorted=False).indices
            top, _ = torch.sort(top, dim=1)
            target = torch.zeros_like(logit).scatter_(1, top, 1.0)
            aux = aux + F.binary_cross_entropy_with_logits(logit, target)
            sel = torch.gather(active, 1, top)                     # positions [b, k]
            x = torch.gather(cand, 1, top[..., None].expand(-1, -1, h.shape[-1]))
            c, s = self._rope(sel, h.dtype)
            out = x
            for layer in self.block:
                out = layer(out, c, s)
            g = cfg.router_alpha * torch.sigmoid(torch.gather(logit, 1, top))
            new_rows = x + g[..., None].to(x.dtype) * out
            h = h.scatter(1, sel[..., None].expand(-1, -1, h.shape[-1]), new_rows)
            active = sel
        h = self.last(h, cos, sin)
        return self._head(h), aux

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(h), self.embed_tokens.weight)

    # ---- export -------------------------------------------------------------

    def export(self, out_dir: str, disk_dtype=torch.bfloat16) -> dict:
        """config.json + model.safetensors in the serving layout; returns the config."""
        cfg = self.cfg
        os.makedirs(out_dir, exist_ok=True)
        t: dict[str, torch.Tensor] = {
            "model.embed_tokens.weight": self.embed_tokens.weight,
            "model.norm.weight": self.norm.weight,
        }

        def put(prefix: str, layer: DecoderLayer) -> None:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[f"{prefix}.self_attn.{name}.weight"] = getattr(layer, name).weight
            for name in ("gate_proj", "up_proj", "down_proj"):
                t[f"{prefix}.mlp.{name}.weight"] = getattr(layer, name).weight
            t[f"{prefix}.input_layernorm.weight"] = layer.input_layernorm.weight
            t[f"{prefix}.post_attention_layernorm.weight"] = (
                layer.post_attention_layernorm.weight)

        if cfg.is_vanilla:
            for i, layer in enumerate(self.layers):
                put(f"model.layers.{i}", layer)
        else:
            put("model.layers.0", self.first)
            # middle_cycle: recursion r's slot j applies shared layer j, so each
            # shared layer is written once, under recursion 1's name.
            for j, layer in enumerate(self.block):
                put(f"model.layers.1.block.{j}", layer)
            put(f"model.layers.{cfg.num_recursions + 1}", self.last)
            for r, router in enumerate(self.routers, start=1):
                t[f"model.layers.{r}.mor_router.router.weight"] = router.weight
        save_file({k: v.detach().to(disk_dtype).contiguous() for k, v in t.items()},
                  os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        config = {
            "architectures": ["MorForCausalLM"],
            "model_type": "mor",
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": True,
            "hidden_act": "silu",
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "torch_dtype": str(disk_dtype).replace("torch.", ""),
            "sharing_strategy": "none" if cfg.is_vanilla else "middle_cycle",
        }
        if not cfg.is_vanilla:
            config.update({"num_recursions": cfg.num_recursions,
                           "router_type": "expert_choice", "router_arch": "linear",
                           "router_activation": "sigmoid",
                           "router_alpha": cfg.router_alpha, "router_threshold": 0.5,
                           "kv_mode": "recursion_wise"})
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        return config

    def config_dict(self) -> dict:
        return asdict(self.cfg)
