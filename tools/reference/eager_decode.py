"""Batched eager-PyTorch decode of the reference model: the benchmark baseline.

``mor_reference.py`` recomputes the whole sequence for every token; this module
runs the same math (its weights, ``rms_norm``, ``rotate_half``, routers, RoPE
frequencies and attention formula) the way a plain eager PyTorch server would:
a batch of sequences, dense per-(depth, slot) K/V caches ``[B, kv_heads, T,
head_dim]``, one forward per decode step. The depth policy is FIXED (every
token of the batch takes recursions 1..d, default Nr), so the batch stays
dense; adaptive routing is not supported here.

Differences from ``mor_reference._layer`` that change speed, not results:
RoPE cos/sin are computed once per step instead of once per layer, and GQA
groups the query heads per K/V head instead of ``repeat_interleave``-ing the
cache (the same products, without copying the cache every layer).

Supported: vanilla, expert choice and token choice models with
``recursion_wise`` KV. ``--check`` verifies the cached decode against
``MorReference.forward`` on a small random model.

Benchmark protocol (the same as ``bench/model_bench.cc``):
  * prefill-N: one sequence of N random tokens in one forward (logits of the
    last token); one untimed run when ``--warmup`` > 0, then
    ``--prefill-repeats`` timed runs; tokens/s = N * repeats / time.
  * decode at batch B: max(B) prompts of ``--prompt-len`` random tokens are
    prefilled once (untimed); for each B the first B sequences restart at the
    end of their prompt, run ``--warmup`` untimed and ``--decode-steps`` timed
    greedy steps of the whole batch. tokens/s = B * steps / time.

Usage::

    eager_decode.py MODEL_DIR [--dtype bfloat16] [--batch-sizes 1,8,32,64] [--json]
    eager_decode.py --check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mor_reference as ref  # noqa: E402

DTYPES = {"float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class EagerDecoder:
    """Batched cached forward of a loaded :class:`mor_reference.MorReference`."""

    def __init__(self, model: ref.MorReference, depth: int | None = None):
        cfg = model.cfg
        if not cfg.is_vanilla and cfg.kv_mode != "recursion_wise":
            raise ValueError("eager decode supports recursion_wise KV only")
        nr = cfg.num_recursions
        self.depth = 1 if cfg.is_vanilla else (nr if depth is None else depth)
        if not 1 <= self.depth <= nr:
            raise ValueError(f"depth {depth} outside 1..{nr}")
        self.m, self.cfg = model, cfg
        # RoPE tables exactly as MorReference._rope computes them.
        pos = torch.arange(cfg.max_position_embeddings, device=model.device)
        freqs = pos.to(torch.float32)[:, None] * model.inv_freq.to(model.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(model.dtype)
        self.sin = emb.sin().to(model.dtype)
        # Cache keys in execution order: unique first, (r, j), unique last.
        keys = []
        if model.first is not None:
            keys.append("first")
        for r in range(1, self.depth + 1):
            keys += [(r, j) for j in range(len(model.blocks[r - 1]))]
        if model.last is not None:
            keys.append("last")
        self.cache_keys = keys

    def new_cache(self, batch: int, max_len: int) -> dict:
        cfg = self.cfg
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        return {k: (torch.zeros(shape, dtype=self.m.dtype, device=self.m.device),
                    torch.zeros(shape, dtype=self.m.dtype, device=self.m.device))
                for k in self.cache_keys}

    @staticmethod
    def slice_cache(cache: dict, s0: int, s1: int) -> dict:
        """Views of sequences s0..s1-1 (writes go to the parent cache)."""
        return {k: (kc[s0:s1], vc[s0:s1]) for k, (kc, vc) in cache.items()}

    def _layer(self, layer: ref.Layer, x, cos, sin, kv, t0: int):
        """Decoder layer on x [B, m, d] at positions t0..t0+m-1 (all sequences),
        appending K/V to kv = (k_cache, v_cache) [B, Hkv, T, hd]."""
        cfg = self.cfg
        B, m, _ = x.shape
        H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        group = H // Hkv  # query head i uses kv head i // group
        n1 = ref.rms_norm(x, layer.norm_in, cfg.rms_norm_eps)
        q = (n1 @ layer.wq.T).view(B, m, H, hd)
        k = (n1 @ layer.wk.T).view(B, m, Hkv, hd)
        v = (n1 @ layer.wv.T).view(B, m, Hkv, hd)
        q = q * cos + ref.rotate_half(q) * sin
        k = k * cos + ref.rotate_half(k) * sin
        kc, vc = kv
        t1 = t0 + m
        kc[:, :, t0:t1] = k.transpose(1, 2)
        vc[:, :, t0:t1] = v.transpose(1, 2)
        keys, values = kc[:, :, :t1], vc[:, :, :t1]
        # [B, Hkv, group * m, hd], rows ordered (g, query).
        qg = q.view(B, m, Hkv, group, hd).permute(0, 2, 3, 1, 4).reshape(B, Hkv, group * m, hd)
        att = (qg @ keys.transpose(-1, -2)) * (hd ** -0.5)  # [B, Hkv, group*m, t1]
        if m > 1:
            qpos = torch.arange(t0, t1, device=x.device).repeat(group)
            allowed = torch.arange(t1, device=x.device)[None, :] <= qpos[:, None]
            att = att.masked_fill(~allowed, float("-inf"))
        att = torch.softmax(att, dim=-1, dtype=torch.float32).to(x.dtype)
        o = (att @ values).view(B, Hkv, group, m, hd).permute(0, 3, 1, 2, 4).reshape(B, m, H * hd)
        h = x + o @ layer.wo.T
        n2 = ref.rms_norm(h, layer.norm_post, cfg.rms_norm_eps)
        return h + (F.silu(n2 @ layer.w_gate.T) * (n2 @ layer.w_up.T)) @ layer.w_down.T

    def _block(self, r: int, h, cos, sin, cache, t0):
        for j, layer in enumerate(self.m.blocks[r - 1]):
            h = self._layer(layer, h, cos, sin, cache[(r, j)], t0)
        return h

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, t0: int, cache: dict, all_logits: bool = False):
        """Forward of ids [B, m] at positions t0..t0+m-1 of every sequence.

        Returns fp32 logits [B, vocab] of the last token (or [B, m, vocab])."""
        m, cfg = self.m, self.cfg
        n = ids.shape[1]
        cos = self.cos[t0:t0 + n][:, None, :]  # [m, 1, hd] broadcasts over [B, m, H, hd]
        sin = self.sin[t0:t0 + n][:, None, :]
        h = m.embed[ids]
        if cfg.is_vanilla:
            h = self._block(1, h, cos, sin, cache, t0)
        else:
            if m.first is not None:
                h = self._layer(m.first, h, cos, sin, cache["first"], t0)
            if cfg.router_type == "expert_choice":
                for r in range(1, self.depth + 1):
                    score = torch.sigmoid(m.routers[r - 1](h))  # [B, m, 1]
                    out = self._block(r, h, cos, sin, cache, t0)
                    h = h + (cfg.router_alpha * score).to(h.dtype) * out
            else:
                h1 = h
                logits = m.routers[0](h1)
                probs = (torch.softmax(logits, dim=-1) if cfg.router_activation == "softmax"
                         else torch.sigmoid(logits))
                g = (cfg.router_alpha * probs[..., self.depth - 1:self.depth]).to(h.dtype)
                for r in range(1, self.depth + 1):
                    h = self._block(r, h, cos, sin, cache, t0)
                h = h1 + g * h
            if m.last is not None:
                h = self._layer(m.last, h, cos, sin, cache["last"], t0)
        if not all_logits:
            h = h[:, -1]
        h = ref.rms_norm(h, m.norm, cfg.rms_norm_eps)
        return (h @ m.lm_head.T).to(torch.float32)


# ----------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------

class _Timer:
    """Wall and process CPU time of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def bench_prefill(dec: EagerDecoder, length: int, warmup_runs: int, repeats: int, gen):
    ids = torch.randint(0, dec.cfg.vocab_size, (1, length), generator=gen)
    wall = cpu = 0.0
    step_seconds = []
    for run in range(warmup_runs + repeats):
        cache = dec.new_cache(1, length)
        with _Timer() as t:
            dec.step(ids, 0, cache)
        if run >= warmup_runs:
            wall, cpu = wall + t.wall, cpu + t.cpu
            step_seconds.append(t.wall)
    return {"phase": "prefill", "batch": 1, "steps": repeats, "tokens": length * repeats,
            "context": length, "seconds": wall, "cpu_seconds": cpu,
            "step_seconds": step_seconds}


def prepare_prompts(dec: EagerDecoder, num_seqs: int, prompt_len: int, max_len: int,
                    step_tokens: int, gen):
    """Prefills num_seqs random prompts (untimed); returns (cache, first tokens, seconds)."""
    prompts = torch.randint(0, dec.cfg.vocab_size, (num_seqs, prompt_len), generator=gen)
    cache = dec.new_cache(num_seqs, max_len)
    per_step = max(1, step_tokens // prompt_len)
    first = torch.empty(num_seqs, dtype=torch.long)
    start = time.perf_counter()
    for s0 in range(0, num_seqs, per_step):
        s1 = min(num_seqs, s0 + per_step)
        logits = dec.step(prompts[s0:s1], 0, EagerDecoder.slice_cache(cache, s0, s1))
        first[s0:s1] = logits.argmax(-1)
    return cache, first, time.perf_counter() - start


def bench_decode(dec: EagerDecoder, cache: dict, first: torch.Tensor, prompt_len: int,
                 batch: int, warmup: int, steps: int):
    sub = EagerDecoder.slice_cache(cache, 0, batch)
    nxt = first[:batch].clone()
    t = None
    step_seconds = []
    for step in range(warmup + steps):
        if step == warmup:
            t = _Timer().__enter__()
        s0 = time.perf_counter()
        logits = dec.step(nxt[:, None], prompt_len + step, sub)
        nxt = logits.argmax(-1)
        if step >= warmup:
            step_seconds.append(time.perf_counter() - s0)
    t.__exit__()
    return {"phase": "decode", "batch": batch, "steps": steps, "tokens": batch * steps,
            "context": prompt_len + warmup, "seconds": t.wall, "cpu_seconds": t.cpu,
            "step_seconds": step_seconds}


def _steps_for(batch: int, default: int, overrides: str) -> int:
    steps = default
    for item in filter(None, (s.strip() for s in overrides.split(","))):
        b, s = item.split(":")
        if int(b) == batch:
            steps = int(s)
    return steps


def run_bench(args) -> None:
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    model = ref.load_model(args.model_dir, dtype=dtype, device=args.device)
    load_s = time.perf_counter() - t0
    depth = None
    if args.policy != "fixed":
        if not args.policy.startswith("fixed"):
            raise SystemExit("eager_decode: --policy must be fixedN (adaptive is not supported)")
        depth = int(args.policy[len("fixed"):])
    dec = EagerDecoder(model, depth)
    cfg = dec.cfg
    policy = f"fixed{dec.depth}"
    kind = ("vanilla L=%d" % cfg.num_hidden_layers if cfg.is_vanilla else
            f"{cfg.sharing_strategy} Nr={cfg.num_recursions} L={cfg.num_hidden_layers} "
            f"{cfg.router_type} {cfg.kv_mode}")
    label = args.label or os.path.basename(os.path.normpath(args.model_dir))
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    steps_of = {b: _steps_for(b, args.decode_steps, args.decode_steps_by_batch)
                for b in batches}
    gen = torch.Generator().manual_seed(args.seed)

    print(f"eager_decode {label}: {kind} (d {cfg.hidden_size}, vocab {cfg.vocab_size}) "
          f"device {args.device} dtype {str(dtype).replace('torch.', '')} policy {policy} "
          f"threads {torch.get_num_threads()} torch {torch.__version__}, "
          f"loaded in {load_s:.2f} s")
    print(f"{'phase':<12} {'batch':>5} {'steps':>5} {'context':>7} {'seconds':>9} "
          f"{'tok/s':>10} {'tok/s(med)':>10} {'cpu%':>5} | ms/step")
    sys.stdout.flush()

    def emit(r):
        r["tok_s"] = r["tokens"] / r["seconds"] if r["seconds"] > 0 else 0.0
        med = statistics.median(r["step_seconds"])
        r["tok_s_median"] = r["tokens"] / r["steps"] / med if med > 0 else 0.0
        name = f"prefill-{r['context']}" if r["phase"] == "prefill" else "decode"
        util = 100.0 * r["cpu_seconds"] / r["seconds"] if r["seconds"] > 0 else 0.0
        print(f"{name:<12} {r['batch']:>5} {r['steps']:>5} {r['context']:>7} "
              f"{r['seconds']:>9.3f} {r['tok_s']:>10.1f} {r['tok_s_median']:>10.1f} {util:>5.0f} | "
              f"{1e3 * r['seconds'] / max(1, r['steps']):.2f}")
        if args.json:
            out = {"engine": "eager", "label": label, "model_dir": args.model_dir,
                   "model": kind, "device": args.device,
                   "dtype": str(dtype).replace("torch.", ""), "policy": policy,
                   "threads": torch.get_num_threads(), "mean_depth": float(dec.depth),
                   "load_seconds": load_s, **r}
            print(json.dumps(out))
        sys.stdout.flush()

    with torch.inference_mode():
        if args.prefill_len > 0:
            emit(bench_prefill(dec, args.prefill_len, 1 if args.warmup > 0 else 0,
                               max(1, args.prefill_repeats), gen))
        max_b = max(batches)
        max_len = args.prompt_len + args.warmup + max(steps_of.values())
        cache, first, secs = prepare_prompts(dec, max_b, args.prompt_len, max_len,
                                             args.prompt_step_tokens, gen)
        print(f"(prompts: {max_b} x {args.prompt_len} tokens prefilled in {secs:.2f} s, untimed)")
        for b in batches:
            emit(bench_decode(dec, cache, first, args.prompt_len, b, args.warmup, steps_of[b]))


# ----------------------------------------------------------------------------
# Self-check against MorReference.forward
# ----------------------------------------------------------------------------

def run_check() -> None:
    """Cached eager decode == full reference forward, on small random models."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_random_model as mk

    torch.manual_seed(0)
    cases = [dict(sharing="middle_cycle", router_type="expert_choice", num_recursions=3),
             dict(sharing="cycle", router_type="expert_choice", router_arch="mlp",
                  num_recursions=2),
             dict(sharing="middle_sequence", router_type="token_choice", num_recursions=3),
             dict(sharing="none")]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            d = os.path.join(tmp, f"m{i}")
            mk.make_random_model(d, seed=i, **case)
            model = ref.load_model(d)
            nr = model.cfg.num_recursions
            for depth in range(1, nr + 1):
                dec = EagerDecoder(model, depth)
                seqs = torch.randint(0, model.cfg.vocab_size, (3, 11))
                want = torch.stack([model.forward(s.tolist(), depth)[0] for s in seqs])
                # prefill 6 tokens of all three sequences, then decode one by one
                cache = dec.new_cache(3, 11)
                got = [dec.step(seqs[:, :6], 0, cache, all_logits=True)]
                for t in range(6, 11):
                    got.append(dec.step(seqs[:, t:t + 1], t, cache, all_logits=True))
                got = torch.cat(got, dim=1)
                err = float((got - want).abs().max())
                worst = max(worst, err)
                print(f"check {case} depth {depth}: max |diff| {err:.2e}")
                if err > 1e-4:
                    raise SystemExit("eager_decode --check FAILED")
    print(f"eager_decode --check OK (worst {worst:.2e})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--check", action="store_true",
                    help="verify the cached decode against MorReference.forward and exit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--decode-steps-by-batch", default="",
                    help="per-batch overrides, e.g. '64:16,32:24'")
    ap.add_argument("--prefill-len", type=int, default=512, help="0 skips the prefill run")
    ap.add_argument("--prefill-repeats", type=int, default=3)
    ap.add_argument("--policy", default="fixed",
                    help="fixedN (default fixed = fixed Nr: every token, every recursion)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-step-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true",
                    help="also print one JSON object per measurement")
    args = ap.parse_args(argv)
    if args.check:
        run_check()
        return
    if not args.model_dir:
        ap.error("model_dir is required (or --check)")
    run_bench(args)


if __name__ == "__main__":
    main()
