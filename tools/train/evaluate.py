#!/usr/bin/env python3
"""Measure the default model for its MODEL_CARD.md and write the golden test data.

  evaluate.py [--model models/default] [--vanilla models/default-vanilla]
              [--corpus build/train/corpus] [--golden tests/data/default_model_golden.json]

Everything runs through tools/reference/mor_reference.py, i.e. the serving
semantics that the C++ engine matches in the parity tests: causal routing
(a token continues to recursion r iff sigmoid(router_r) >= 0.5), fixed depths
1..Nr, fp32 compute on the bf16 weights. Writes

  <model>/eval.json         validation loss / perplexity per policy and for the
                            vanilla baseline, exit shares, per-class depths
  <model>/routing_sample.png  a validation passage coloured by routed depth
  <golden>                  prompt, greedy continuations per policy (with the
                            reference's top-2 margins) and the exit shares on a
                            fixed validation text, for tests/scheduler/default_model_test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mor_reference import load_model  # noqa: E402
from train import encode_corpus  # noqa: E402

WINDOW = 256
GOLDEN_PROMPTS = ["And God said", "The LORD is my shepherd", "In the beginning was the Word"]
GOLDEN_NEW = 24
SHARE_WINDOWS = 4          # validation windows of WINDOW tokens for the exit-share test
SHARE_BAND = 0.02          # |C++ share - recorded share| allowed per depth
FUNCTION_WORDS = set("""
a an the and or but nor for so yet if then than that this these those there here
of to in on at by with from into upon unto out up about over under through after before
i me my mine we us our ye you your thee thou thy thine he him his she her it its they
them their who whom whose which what when where why how all any some no not every each
be is are was were been am shall will should would may might can could must hath have
has had do did doth dost art wast let o also even as
""".split())
COLORS = {1: "#c6dbef", 2: "#6baed6", 3: "#08519c"}


def log(msg: str) -> None:
    print(f"evaluate: {msg}", file=sys.stderr, flush=True)


def windows(ids: torch.Tensor, n: int | None = None) -> list[list[int]]:
    count = (len(ids) - 1) // WINDOW
    if n is not None:
        count = min(count, n)
    return [ids[i * WINDOW:(i + 1) * WINDOW + 1].tolist() for i in range(count)]


def eval_policy(model, wins, depth):
    """Mean CE (nats/token) and depth histogram over the windows."""
    total, count = 0.0, 0
    hist = torch.zeros(model.cfg.num_recursions + 1, dtype=torch.long)
    all_depths = []
    for w in wins:
        logits, depths, _ = model.forward(w[:-1], depth)
        total += float(torch.nn.functional.cross_entropy(
            logits, torch.tensor(w[1:]), reduction="sum"))
        count += len(w) - 1
        hist += torch.bincount(depths, minlength=len(hist))
        all_depths.append(depths)
    return total / count, hist, all_depths


def token_class(piece: str, prev_alpha: bool) -> str:
    word = piece.lstrip("Ġ").strip()
    starts_word = piece.startswith("Ġ") or not prev_alpha
    if not word or not any(c.isalpha() for c in word):
        return "punctuation / newline"
    if not starts_word:
        return "word continuation piece"
    if word.lower() in FUNCTION_WORDS:
        return "function word"
    if word[0].isupper():
        return "capitalised word (names, sentence starts)"
    return "content word"


def class_stats(tok, wins, depth_lists, nr):
    stats: dict[str, list[int]] = {}
    per_token: dict[str, list[int]] = {}
    for w, depths in zip(wins, depth_lists):
        prev_alpha = False
        for tid, d in zip(w[:-1], depths.tolist()):
            piece = tok.id_to_token(tid)
            cls = token_class(piece, prev_alpha)
            stats.setdefault(cls, []).append(d)
            per_token.setdefault(piece, []).append(d)
            prev_alpha = piece[-1:].isalpha()
    out = {}
    for cls, ds in sorted(stats.items()):
        out[cls] = {"tokens": len(ds), "mean_depth": round(sum(ds) / len(ds), 3),
                    "share_deepest": round(sum(1 for d in ds if d == nr) / len(ds), 3)}
    frequent = [(p, ds) for p, ds in per_token.items() if len(ds) >= 40]
    frequent.sort(key=lambda x: sum(x[1]) / len(x[1]))
    def fmt(items):
        return [{"token": p.replace("Ġ", " "),
                 "count": len(ds), "mean_depth": round(sum(ds) / len(ds), 2)}
                for p, ds in items]
    return out, fmt(frequent[:12]), fmt(frequent[-12:][::-1])


def render_png(tok, ids, depths, path, nr):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    pieces = [tok.decode([i]) for i in ids]
    cols, line_h, char_w = 92, 1.0, 1.0
    rows, x, y = [], 0, 0
    for text, d in zip(pieces, depths):
        for k, part in enumerate(text.split("\n")):
            if k > 0:
                x, y = 0, y + 1
            if x + len(part) > cols:
                x, y = 0, y + 1
                part = part.lstrip()
            if part:
                rows.append((x, y, part, d))
                x += len(part)
    height = y + 1
    # DejaVu Sans Mono advances 0.6 em: 9.5 pt -> 0.0792 in per character.
    fig = plt.figure(figsize=(cols * 0.0792 / 0.98, height * 0.28 + 0.9), dpi=110)
    ax = fig.add_axes([0.01, 0.12, 0.98, 0.86])
    ax.set_xlim(0, cols)
    ax.set_ylim(height, -0.3)
    ax.axis("off")
    for x, y, part, d in rows:
        ax.add_patch(plt.Rectangle((x * char_w, y * line_h + 0.1), len(part) * char_w, 0.8,
                                   color=COLORS.get(int(d), "#cccccc"), lw=0))
        ax.text(x * char_w, y * line_h + 0.55, part, family="monospace", fontsize=9.5,
                va="center", color="white" if d == nr else "black")
    fig.legend(handles=[Patch(color=COLORS[d], label=f"exits at depth {d}")
                        for d in range(1, nr + 1)], loc="lower center", ncol=nr,
               frameon=False)
    fig.savefig(path)
    plt.close(fig)


def golden(model, tok, val_wins, share_hist):
    out = {"window": WINDOW, "share_band": SHARE_BAND, "prompts": []}
    nr = model.cfg.num_recursions
    for text in GOLDEN_PROMPTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        entry = {"text": text, "ids": ids, "greedy": {}}
        for name, depth in [("adaptive", None)] + [(f"fixed{d}", d) for d in range(1, nr + 1)]:
            seq, new, margins = list(ids), [], []
            for _ in range(GOLDEN_NEW):
                logits, _, _ = model.forward(seq, depth)
                top2 = torch.topk(logits[-1], 2).values
                margins.append(float(top2[0] - top2[1]))
                nxt = int(torch.argmax(logits[-1]))
                new.append(nxt)
                seq.append(nxt)
            # Compare only up to the first near-tie (fp32 reorderings could flip it).
            robust = next((i for i, m in enumerate(margins) if m < 1e-3), len(margins))
            entry["greedy"][name] = {"ids": new, "robust_len": robust,
                                     "text": tok.decode(new)}
        out["prompts"].append(entry)
    out["share_windows"] = [w[:-1] for w in val_wins[:SHARE_WINDOWS]]
    total = int(share_hist[1:].sum())
    out["exit_shares"] = [round(int(share_hist[d]) / total, 4) for d in range(1, nr + 1)]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--vanilla", default=os.path.join(ROOT, "models", "default-vanilla"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "build", "train", "corpus"))
    ap.add_argument("--golden", default=os.path.join(ROOT, "tests", "data",
                                                     "default_model_golden.json"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    val = encode_corpus(tok, os.path.join(args.corpus, "val.txt"))
    wins = windows(val)
    model = load_model(args.model)
    nr = model.cfg.num_recursions
    result = {"val_tokens_scored": len(wins) * WINDOW, "window": WINDOW, "policies": {}}
    adaptive_depths, adaptive_hist = None, None
    for name, depth in [(f"fixed{d}", d) for d in range(1, nr + 1)] + [("adaptive", None)]:
        loss, hist, depths = eval_policy(model, wins, depth)
        steps = sum(int(hist[d]) * d for d in range(1, nr + 1))
        result["policies"][name] = {
            "val_loss": round(loss, 4), "perplexity": round(math.exp(loss), 2),
            "mean_recursions_per_token": round(steps / int(hist.sum()), 3)}
        log(f"{name}: loss {loss:.4f} ppl {math.exp(loss):.2f}")
        if depth is None:
            adaptive_depths, adaptive_hist = depths, hist
    total = int(adaptive_hist.sum())
    result["exit_shares"] = {str(d): round(int(adaptive_hist[d]) / total, 4)
                             for d in range(1, nr + 1)}
    classes, shallow, deep = class_stats(tok, wins, adaptive_depths, nr)
    result["classes"], result["shallowest_tokens"], result["deepest_tokens"] = (
        classes, shallow, deep)
    if os.path.isdir(args.vanilla):
        vmodel = load_model(args.vanilla)
        loss, _, _ = eval_policy(vmodel, wins, None)
        result["vanilla"] = {"val_loss": round(loss, 4), "perplexity": round(math.exp(loss), 2),
                             "layers": vmodel.cfg.num_hidden_layers}
        log(f"vanilla: loss {loss:.4f}")
    render_png(tok, wins[1][:-1][:230], adaptive_depths[1][:230].tolist(),
               os.path.join(args.model, "routing_sample.png"), nr)
    _, share_hist, _ = eval_policy(model, wins[:SHARE_WINDOWS], None)
    gold = golden(model, tok, wins, share_hist)
    os.makedirs(os.path.dirname(args.golden), exist_ok=True)
    with open(args.golden, "w") as f:
        json.dump(gold, f)
    result["eval_seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(args.model, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
