#!/usr/bin/env python3
"""tools/train's trainable MoR against the serving contract.

1. A randomly initialised MorLm, exported in fp32, loads in the Python
   reference (tools/reference/mor_reference.py, which the C++ engine matches in
   the parity tests) with no unused or missing tensors, and gives the same
   logits at every fixed depth (the training module and the served model are
   the same function).
2. Training-time routing follows the recipe: recursion r selects
   max(1, int((Nr - r + 1) / Nr * n)) tokens per sequence (the capacity
   schedule).
3. A few optimizer steps on a tiny corpus lower the loss, and the exported
   vanilla baseline loads too.
Exit code 0 = pass.
"""

import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
from mor_lm import LmConfig, MorLm  # noqa: E402
from mor_reference import load_model  # noqa: E402

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def perturbed(cfg):
    torch.manual_seed(0)
    model = MorLm(cfg)
    with torch.no_grad():  # norms away from 1, larger weights: a wrong op shows up
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_export_matches_reference(tmp):
    cfg = LmConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_heads=4,
                   num_kv_heads=2, block_layers=2, num_recursions=3)
    model = perturbed(cfg).eval()
    model.export(tmp, disk_dtype=torch.float32)
    ref = load_model(tmp, dtype=torch.float32)
    check(ref.unused_keys == [], f"no unused tensors in the export ({ref.unused_keys})")
    ids = torch.randint(1, cfg.vocab_size, (1, 37), generator=torch.Generator().manual_seed(1))
    for depth in range(1, 4):
        with torch.no_grad():
            mine, _ = model(ids, depth=depth)
        theirs, depths, _ = ref.forward(ids[0].tolist(), depth=depth)
        err = float((mine[0] - theirs).abs().max())
        check(err < 1e-4, f"fixed depth {depth}: max |logit diff| {err:.2e} < 1e-4")
        check(bool((depths == depth).all()), f"fixed depth {depth}: reference depths")


def test_capacity_schedule():
    cfg = LmConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_heads=4,
                   num_kv_heads=2, block_layers=1, num_recursions=3)
    model = perturbed(cfg)
    chosen = []
    originals = [layer.forward for layer in model.block]

    def spy(x, cos, sin, _f=originals[0]):
        chosen.append(x.shape[1])
        return _f(x, cos, sin)

    model.block[0].forward = spy
    n = 30
    model(torch.randint(1, 300, (2, n)))
    want = [max(1, int((3 - r + 1) / 3 * n)) for r in (1, 2, 3)]
    check(chosen == want, f"tokens per recursion {chosen} == capacity schedule {want}")


def test_training_lowers_loss(tmp):
    torch.manual_seed(0)
    for arch_recursions, layers in ((3, 0), (0, 4)):
        cfg = LmConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_heads=2,
                       num_kv_heads=1, block_layers=1, num_recursions=arch_recursions,
                       vanilla_layers=layers)
        model = MorLm(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        data = torch.arange(64).remainder(7).view(4, 16) + 3  # a periodic sequence
        losses = []
        for _ in range(60):
            logits, aux = model(data[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 50), data[:, 1:].reshape(-1)) + 0.001 * aux
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        name = "mor" if arch_recursions else "vanilla"
        check(losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.2f} -> {losses[-1]:.2f}")
        out = os.path.join(tmp, name)
        model.export(out)
        ref = load_model(out)
        check(ref.cfg.is_vanilla == (name == "vanilla"), f"{name}: exported config loads")


def main():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        test_export_matches_reference(os.path.join(tmp, "export"))
        test_capacity_schedule()
        test_training_lowers_loss(tmp)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
