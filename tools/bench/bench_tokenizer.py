#!/usr/bin/env python3
"""Tokenizer benchmark: encoding MB/s of the C++ tokenizer vs HF `tokenizers`.

What `./mor bench tokenizer` runs (mor_bench_tokenizer without --tokenizer
hands over to this script). It

1. writes ~1 MB of deterministic text (``--bytes``) into <build>/bench-tokenizer/:
   documents of English-like prose (Zipf-distributed words, so the word caches
   see realistic reuse), code, German/French/Russian, Chinese, numbers, emoji,
   whitespace runs and chat turns with special tokens; and, from another seed,
   a training text of the same kind;
2. trains the gpt2 / llama3 / smollm tokenizer styles of
   tools/reference/make_tokenizer_fixtures.py on the training text
   (``--vocab-size``, default 16384);
3. for each style, one after another on the same machine and the same text:
   HF `tokenizers` (Python binding, Tokenizer.encode per call) and the C++
   tokenizer (mor_bench_tokenizer), both single-threaded (RAYON_NUM_THREADS=1,
   TOKENIZERS_PARALLELISM=false; the C++ Encode has no threads). Protocol on both
   sides: a cold pass on a freshly loaded tokenizer, one untimed warm-up pass,
   then ``--iters`` timed passes; MB/s = 10^6 bytes / seconds of the fastest,
   by the encoding thread's CPU time (robust to other load on a shared
   machine) and by wall clock.
   "docs" encodes each document in turn, "whole" the concatenation in one call;
4. checks that both produced identical ids, and prints ONE markdown table with
   the exact command and machine info.
"""

from __future__ import annotations

import os

# Single-threaded HF: must be set before `tokenizers` is imported.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import array  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import make_tokenizer_fixtures as fixtures  # noqa: E402

DOC_SEP = "\x1e"  # separates documents in the text file (never in the text)
STYLES = ("gpt2", "llama3", "smollm")


def log(msg: str) -> None:
    print(f"bench_tokenizer: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "qu"]
EXTRA_WORDS = ("Größe Straße Mädchen schön über für déjà naïve façade crème où être "
               "Москва привет мир данные").split()
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
EMOJI = ["😀", "👍🏽", "❤️", "🚀", "🎉", "🇺🇸", "👨‍👩‍👧‍👦", "✨"]


def make_text(target_bytes: int, seed: int) -> list[str]:
    """Documents totalling about target_bytes of UTF-8."""
    rng = random.Random(seed)
    words = sorted({w for d in fixtures.TRAIN_DOCS for w in d.split()})
    words += ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
              for _ in range(20000)]
    rng.shuffle(words)
    weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(words))]

    def sentence() -> str:
        n = rng.randint(5, 25)
        ws = rng.choices(words, weights, k=n)
        if rng.random() < 0.1:
            ws.insert(rng.randrange(n), rng.choice(EXTRA_WORDS))
        if rng.random() < 0.15:
            ws.insert(rng.randrange(n), f"{rng.randint(0, 10**rng.randint(1, 7)):,}")
        s = " ".join(ws)
        s = s[0].upper() + s[1:]
        if rng.random() < 0.2:
            s += " " + rng.choice(["(see above)", "- isn't it?", "we'll see", "it's 3.5%"])
        return s + rng.choice([".", ".", ".", "!", "?", ";"])

    def prose() -> str:
        return "\n\n".join(" ".join(sentence() for _ in range(rng.randint(2, 8)))
                           for _ in range(rng.randint(1, 4)))

    def code() -> str:
        lines = []
        for _ in range(rng.randint(5, 30)):
            ident = "_".join(rng.choices(words[:2000], k=rng.randint(1, 3)))
            indent = (" " * (4 * rng.randint(0, 3)) if rng.random() < 0.8
                      else "\t" * rng.randint(1, 2))
            lines.append(rng.choice([
                f"{indent}{ident} = {ident}({rng.randint(0, 999)}, \"{rng.choice(words)}\")",
                f"{indent}if ({ident} != nullptr && {ident}->size() > {rng.randint(1, 64)}) {{",
                f"{indent}return {ident}[{rng.randint(0, 9)}] * 2;  // {sentence()}",
                f"{indent}for i in range(len({ident})):", f"{indent}}}", ""]))
        return "\n".join(lines) + "\n"

    def multilingual() -> str:
        parts = []
        for _ in range(rng.randint(3, 10)):
            kind = rng.random()
            if kind < 0.4:
                parts.append("".join(rng.choices(CJK, k=rng.randint(5, 40))) + "。")
            elif kind < 0.7:
                parts.append(" ".join(rng.choices(EXTRA_WORDS, k=rng.randint(3, 12))) + ".")
            else:
                parts.append(sentence() + " " + "".join(rng.choices(EMOJI, k=rng.randint(1, 3))))
        return " ".join(parts)

    def chat() -> str:
        turns = []
        for role in ("system", "user", "assistant")[:rng.randint(2, 3)]:
            turns.append(f"<|im_start|>{role}\n{sentence()} {sentence()}<|im_end|>")
        return "\n".join(turns) + "<|endoftext|>"

    def table() -> str:
        rows = []
        for _ in range(rng.randint(3, 15)):
            rows.append("| " + " | ".join(str(rng.randint(0, 10**rng.randint(1, 6)))
                                          for _ in range(5)) + " |   ")
        return "\n".join(rows)

    kinds = [(prose, 0.6), (code, 0.15), (multilingual, 0.12), (chat, 0.08), (table, 0.05)]
    docs, total = [], 0
    while total < target_bytes:
        fn = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        doc = fn()
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------

def measure(pass_fn, iters: int) -> dict:
    """Seconds by wall clock and by CPU time, with the C++ bench's protocol: cold
    pass, untimed warm-up pass, fastest of `iters` passes. CPU time is the whole
    process's, so work HF might hand to helper threads would still be counted."""
    w0, c0 = time.perf_counter(), time.process_time()
    pass_fn()
    r = {"cold_wall": time.perf_counter() - w0, "cold_cpu": time.process_time() - c0,
         "best_wall": float("inf"), "best_cpu": float("inf")}
    pass_fn()
    for _ in range(iters):
        w0, c0 = time.perf_counter(), time.process_time()
        pass_fn()
        r["best_wall"] = min(r["best_wall"], time.perf_counter() - w0)
        r["best_cpu"] = min(r["best_cpu"], time.process_time() - c0)
    return r


def _rates(prefix: str, seconds: dict, mb: float) -> dict:
    return {f"{prefix}_cold_mb_s": mb / seconds["cold_wall"],
            f"{prefix}_mb_s": mb / seconds["best_wall"],
            f"{prefix}_cold_cpu_mb_s": mb / seconds["cold_cpu"],
            f"{prefix}_cpu_mb_s": mb / seconds["best_cpu"]}


def bench_hf(path: str, docs: list[str], iters: int) -> dict:
    whole = "".join(docs)
    mb = len(whole.encode("utf-8")) / 1e6
    tok = Tokenizer.from_file(path)
    ids: list[int] = []

    def docs_pass():
        ids.clear()
        for d in docs:
            ids.extend(tok.encode(d, add_special_tokens=False).ids)

    docs_s = measure(docs_pass, iters)
    tok_whole = Tokenizer.from_file(path)  # cold cache for the whole-text pass
    whole_ids: list[int] = []

    def whole_pass():
        whole_ids[:] = tok_whole.encode(whole, add_special_tokens=False).ids

    whole_s = measure(whole_pass, iters)
    return {**_rates("docs", docs_s, mb), **_rates("whole", whole_s, mb), "ids": list(ids),
            "whole_ids": whole_ids}


def bench_cpp(binary: str, path: str, text_path: str, iters: int, ids_path: str) -> dict:
    cmd = [binary, "--tokenizer", path, "--text", text_path, "--iters", str(iters), "--json",
           "--ids_out", ids_path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    ids = array.array("i")
    with open(ids_path, "rb") as f:
        ids.frombytes(f.read())
    result["ids"] = ids.tolist()
    return result


def machine_info() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores (both tokenizers single-threaded); "
            f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="C++ tokenizer vs HF tokenizers, encode MB/s.")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--bytes", type=int, default=1 << 20, help="size of the benchmark text")
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--styles", nargs="*", default=list(STYLES), choices=STYLES)
    args = ap.parse_args(argv)

    binary = os.path.join(args.build_dir, "bench", "mor_bench_tokenizer")
    if not os.path.exists(binary):
        log(f"{binary} not found; build the mor_bench_tokenizer target first")
        return 1
    work = os.path.join(args.build_dir, "bench-tokenizer")
    os.makedirs(work, exist_ok=True)
    docs = make_text(args.bytes, seed=2)
    text_path = os.path.join(work, "text.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(DOC_SEP.join(docs))
    nbytes = len("".join(docs).encode("utf-8"))
    log(f"text: {nbytes} bytes, {len(docs)} documents")
    train_docs = make_text(args.bytes, seed=1)

    rows, all_equal = [], True
    for style in args.styles:
        path = os.path.join(work, f"{style}-{args.vocab_size}", "tokenizer.json")
        if not os.path.exists(path):
            t0 = time.time()
            tok = fixtures.STYLES[style](docs=train_docs, vocab_size=args.vocab_size)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tok.save(path)
            log(f"trained {style} (vocab {tok.get_vocab_size()}) in {time.time() - t0:.1f}s")
        hf = bench_hf(path, docs, args.iters)
        cpp = bench_cpp(binary, path, text_path, args.iters, os.path.join(work, "ids.bin"))
        same = hf["ids"] == cpp["ids"] and len(hf["whole_ids"]) == cpp["whole_tokens"]
        all_equal &= same
        for mode, ntok in (("docs", len(hf["ids"])), ("whole", len(hf["whole_ids"]))):
            rows.append((style, mode, ntok, same,
                         [hf[f"{mode}_cold_cpu_mb_s"], hf[f"{mode}_cpu_mb_s"],
                          cpp[f"{mode}_cold_cpu_mb_s"], cpp[f"{mode}_cpu_mb_s"],
                          hf[f"{mode}_mb_s"], cpp[f"{mode}_mb_s"]]))
        log(f"{style}: HF {hf['docs_cpu_mb_s']:.2f} MB/s, C++ {cpp['docs_cpu_mb_s']:.2f} MB/s "
            "(docs, warm, thread CPU time)")

    print(f"\nTokenizer encode throughput, {nbytes / 1e6:.2f} MB of text in {len(docs)} documents "
          f"(vocab {args.vocab_size}; MB = 10^6 bytes of UTF-8). MB/s by CPU time (HF: the "
          "process's, C++: the encoding thread's) unless marked wall; warm = fastest of "
          f"{args.iters} passes after a warm-up pass, cold = first pass of a freshly loaded "
          "tokenizer.\n")
    print("| style | mode | tokens | HF cold | HF warm | C++ cold | C++ warm | C++/HF warm "
          "| HF warm (wall) | C++ warm (wall) | ids identical |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for style, mode, ntok, same, (hc, hw, cc, cw, hww, cww) in rows:
        print(f"| {style} | {mode} | {ntok} | {hc:.2f} | {hw:.2f} | {cc:.2f} | {cw:.2f} "
              f"| {cw / hw:.1f}x | {hww:.2f} | {cww:.2f} | {'yes' if same else 'NO'} |")
    print(f"\nLoad average during the run: {os.getloadavg()[0]:.1f}")
    print(f"\nCommand: {shlex.join([sys.executable] + sys.argv)}")
    print(f"Machine: {machine_info()}")
    print("HF: tokenizers.Tokenizer.encode(text, add_special_tokens=False) from Python, one call "
          "per document (docs) or one call (whole), RAYON_NUM_THREADS=1. C++: "
          "Tokenizer::EncodeTo, one thread.")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
