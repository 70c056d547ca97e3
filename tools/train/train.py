#!/usr/bin/env python3
"""Train the default MoR model (or its vanilla baseline) on the prepared corpus.

  train.py --corpus DIR --tokenizer DIR --out DIR [--arch mor|vanilla] ...

Reads DIR/train.txt and DIR/val.txt (tools/train/prepare_corpus.py), encodes
them with the tokenizer (tools/train/train_tokenizer.py), joins documents with
the <|endoftext|> token (id 0) and trains on random windows of ``--seq-len``
tokens: AdamW, linear warm-up then cosine decay, gradient clipping, bf16
autocast (CPU, or CUDA when --device cuda), fixed seed. The loss is the LM
cross-entropy plus ``--aux-weight`` x the routers' BCE loss (MoR only).
Writes OUT/config.json, OUT/model.safetensors (bf16), the tokenizer files, and
OUT/train_log.json (hyper-parameters, loss curve, wall time, hardware).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mor_lm import LmConfig, MorLm  # noqa: E402

EOT = 0


def log(msg: str) -> None:
    print(f"train: {msg}", file=sys.stderr, flush=True)


def encode_corpus(tok: Tokenizer, path: str) -> torch.Tensor:
    """Documents (blank-line separated) -> one id stream, EOT before each."""
    with open(path, encoding="utf-8") as f:
        docs = [d for d in f.read().split("\n\n") if d.strip()]
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.append(EOT)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def val_loss(model: MorLm, val: torch.Tensor, seq_len: int, batch: int, autocast,
             depth: int | None = None) -> float:
    """Mean CE over consecutive non-overlapping val windows (training routing)."""
    model.eval()
    n_win = (len(val) - 1) // seq_len
    total, count = 0.0, 0
    for start in range(0, n_win, batch):
        rows = [val[i * seq_len:(i + 1) * seq_len + 1]
                for i in range(start, min(n_win, start + batch))]
        x = torch.stack(rows).to(next(model.parameters()).device)
        with autocast():
            logits, _ = model(x[:, :-1], depth=depth)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               x[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += x[:, 1:].numel()
    model.train()
    return total / count


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True, help="dir with tokenizer.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", choices=["mor", "vanilla"], default="mor")
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--intermediate-size", type=int, default=768)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--block-layers", type=int, default=2)
    ap.add_argument("--recursions", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--aux-weight", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="autocast dtype (parameters and optimizer stay fp32)")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop early after this wall time (0: no limit); logged")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    train = encode_corpus(tok, os.path.join(args.corpus, "train.txt"))
    val = encode_corpus(tok, os.path.join(args.corpus, "val.txt"))
    log(f"train tokens {len(train)}, val tokens {len(val)}")

    effective = 2 + args.block_layers * args.recursions
    cfg = LmConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden_size,
                   intermediate_size=args.intermediate_size, num_heads=args.heads,
                   num_kv_heads=args.kv_heads, block_layers=args.block_layers,
                   num_recursions=args.recursions if args.arch == "mor" else 0,
                   vanilla_layers=effective if args.arch == "vanilla" else 0)
    model = MorLm(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{args.arch}: {cfg.num_hidden_layers} effective layers, {n_params / 1e6:.2f}M params")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    gen = torch.Generator().manual_seed(args.seed)
    curve = []
    t0 = time.time()
    tokens_seen = 0
    step = 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.warmup, args.lr, args.min_lr)
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=gen)
        x = torch.stack([train[s:s + args.seq_len + 1] for s in starts.tolist()]).to(device)
        with autocast():
            logits, aux = model(x[:, :-1])
        lm = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        loss = lm + args.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += x[:, :-1].numel()
        if step % 20 == 0 or step == args.steps - 1:
            el = time.time() - t0
            log(f"step {step} lm {lm.item():.4f} aux {aux.item():.4f} "
                f"{tokens_seen / el:.0f} tok/s, {el / 60:.1f} min")
        entry = {"step": step, "lm_loss": lm.item(), "aux_loss": aux.item()}
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            entry["val_loss"] = val_loss(model, val, args.seq_len, args.batch, autocast)
            log(f"step {step} val {entry['val_loss']:.4f}")
        curve.append(entry)
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            log(f"stopping at step {step}: --max-minutes {args.max_minutes}")
            break
    wall = time.time() - t0

    os.makedirs(args.out, exist_ok=True)
    config = model.export(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"args": vars(args), "model": model.config_dict(), "config": config,
                   "params": n_params, "steps_done": step + 1,
                   "tokens_seen": tokens_seen, "train_tokens": len(train),
                   "val_tokens": len(val), "wall_seconds": round(wall, 1),
                   "hardware": {"machine": platform.machine(),
                                "processor": _cpu_name(), "threads": args.threads,
                                "device": args.device, "torch": torch.__version__},
                   "curve": curve}, f, indent=1)
    log(f"done in {wall / 60:.1f} min -> {args.out}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
