#!/usr/bin/env python3
"""Train the default model's byte-level BPE tokenizer with HF `tokenizers`.

GPT-2 family layout (what model/tokenizer.cc loads): ByteLevel pre-tokenizer
with the GPT-2 split regex, no prefix space, ByteLevel decoder, and one special
token ``<|endoftext|>`` (id 0) that separates documents and serves as BOS and
EOS. The vocabulary starts with the 256 byte symbols, so every text encodes.

Usage: train_tokenizer.py TRAIN_TXT OUT_DIR [--vocab-size 4096]
"""

from __future__ import annotations

import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL = "<|endoftext|>"


def train_tokenizer(train_txt: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([train_txt], trainer)
    return tok


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_txt")
    ap.add_argument("out_dir")
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    tok = train_tokenizer(args.train_txt, args.vocab_size)
    if tok.token_to_id(SPECIAL) != 0:
        raise SystemExit(f"{SPECIAL} must have id 0")
    tok.save(os.path.join(args.out_dir, "tokenizer.json"))
    with open(os.path.join(args.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": SPECIAL, "eos_token": SPECIAL,
                   "model_max_length": 1024, "tokenizer_class": "PreTrainedTokenizerFast"},
                  f, indent=2)
    print(f"train_tokenizer: vocab {tok.get_vocab_size()} -> {args.out_dir}")


if __name__ == "__main__":
    main()
