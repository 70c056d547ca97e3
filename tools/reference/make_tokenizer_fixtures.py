"""Train small byte-level BPE tokenizers with HF `tokenizers` and write the
parity fixtures the C++ tokenizer (model/tokenizer.h) is tested against.

Usage::

    make_tokenizer_fixtures.py --out DIR                       # the trained styles
    make_tokenizer_fixtures.py --out DIR --only default_model \
        [--default-model-dir models/default] [--kjv-corpus-dir DIR/kjv]

The trained styles are built from text in this file (no download): the training corpus
(English, German, French, Chinese, Japanese, Russian, Arabic, Hindi, emoji,
code, digits, whitespace runs, special tokens) and the parity corpus (Unicode,
emoji, whitespace runs of every shape, digits, code, special tokens and their
near misses, and --fuzz random strings built from tricky pieces). Layout written (deterministic)::

    DIR/manifest.json                 {"format_version", "tokenizers_version", "styles"}
    DIR/<style>/tokenizer.json        the trained tokenizer
    DIR/<style>/expected.json         HF results (see below)
    DIR/train_corpus.txt              the training corpus (documents joined by "\\n\\n")

Styles (pre-tokenizer / post-processor as in the named model families):

* ``gpt2``: ByteLevel(use_regex) pre-tokenizer, ByteLevel post-processor,
  merges written in the legacy ``"a b"`` string form.
* ``llama3``: Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=false)],
  TemplateProcessing ``<|begin_of_text|> $A``, ``ignore_merges`` with whole-word
  vocab entries that no merge builds.
* ``smollm``: Sequence[Digits(individual_digits), ByteLevel(use_regex)] (SmolLM / SmolLM2).
* ``options``: ByteLevel(add_prefix_space=true), TemplateProcessing ``<s> $A </s>`` and
  added tokens with lstrip / rstrip / single_word / normalized set, a non-special
  added token with non-ASCII content (its HF decode replaces bytes) and one that is
  already in the vocab.
* ``splits``: Sequence[Split("--", Removed), Split([,;], Contiguous), Digits(runs), ByteLevel]
  (the other split behaviours the C++ side supports).
* ``default_model``: not trained here: the embedded default model's tokenizer
  (``--default-model-dir``, default ``models/default``; trained by
  tools/train/train_tokenizer.py) copied byte for byte. Besides the parity corpus
  it encodes the model's own corpus: every document of the KJV ``train.txt`` and
  ``val.txt`` that tools/train/prepare_corpus.py writes into ``--kjv-corpus-dir``
  (default ``DIR/kjv``; run here unless that directory already holds both files
  with the sha256 sums of its ``corpus.json``), documents split on blank lines as
  tools/train/train.py splits them, plus the first KJV_JOINED_DOCS documents
  joined as one text. Building that corpus needs ``apt-get download`` (the
  Debian mirror); when it fails this script fails: the corpus is never skipped.
  Only the default_model run is slow to fetch, so it is asked for by ``--only``
  and leaves ``manifest.json`` (the trained styles) alone.

``expected.json`` of a style::

    {"vocab_size": n (with added tokens), "bos": id|null, "eos": id|null,
     "id_to_token": [token or null for ids 0 .. n+2],
     "encode": [{"text", "ids", "ids_special", "decoded", "decoded_skip"}],
     "decode": [{"ids", "text", "text_skip"}]}

``ids`` = encode(text, add_special_tokens=False), ``ids_special`` = with True;
``decoded`` / ``decoded_skip`` = decode(ids, skip_special_tokens=False / True).
``encode`` covers the parity corpus and every training document plus the whole
training corpus; ``decode`` holds random id streams (all ids, and streams of
single-byte tokens that form invalid UTF-8) with a few out-of-range ids.

Corpus entries of ``default_model`` (the KJV documents) are stored compactly:
``ids_special`` is left out where it equals ``ids``, ``decoded`` where it equals
``text`` and ``decoded_skip`` where it equals ``decoded`` (the C++ test reads
the omitted field as that value; everything is still compared). Its
expected.json also has ``"corpora": [{"name", "path", "sha256", "bytes",
"documents", "first", "count"}]``: the KJV files and the range of ``encode``
holding their documents in order (``"\\n\\n".join`` of them is the file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, processors, trainers
from tokenizers import pre_tokenizers as pre

FORMAT_VERSION = 1
VOCAB_SIZE = 1500
NUM_RANDOM_DECODES = 150

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL_STYLE = "default_model"
PREPARE_CORPUS = os.path.join(REPO_ROOT, "tools", "train", "prepare_corpus.py")
KJV_FILES = ("train.txt", "val.txt")
KJV_JOINED_DOCS = 40  # the first train.txt documents, also encoded joined as one text

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# ----------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------

TRAIN_DOCS = [
    "The quick brown fox jumps over the lazy dog. The dog didn't care; it's a lazy dog, "
    "and we've all seen lazy dogs before. They'll sleep, I'm sure, and you'd agree.",
    "Mixture-of-Recursions models reuse one shared stack of layers several times. A small "
    "router decides, token by token, whether a token goes one recursion deeper.",
    "Serving systems batch requests together: continuous batching admits new requests "
    "at every step, and paged KV caches keep memory fragmentation low.",
    "In 2024, 1,234 engineers wrote 56,789 lines of code in 3.5 months; the budget was "
    "$1,000,000.00 (about 0.92 million EUR) and 99.9% of the tests passed.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Mädchen, "
    "Übermäßig schöne Grüße aus München und Köln!",
    "Le cœur a ses raisons que la raison ne connaît point. Où est la bibliothèque ? "
    "Déjà vu, naïve, façade, crème brûlée.",
    "自然语言处理是人工智能的一个重要领域。我们正在构建一个高效的推理服务系统，"
    "支持混合递归模型。今天天气很好，我们去公园散步吧。",
    "日本語のテキストも少し含めます。カタカナとひらがな、そして漢字。東京は大きな都市です。",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!",
    "مرحبا بالعالم. هذه جملة باللغة العربية للاختبار.",
    "नमस्ते दुनिया। यह हिंदी में एक परीक्षण वाक्य है।",
    "Emoji time 😀😃😄 👍🏽 ❤️ 🇺🇸🇩🇪 👨‍👩‍👧‍👦 🚀✨ and more 🎉🎉🎉!",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) "
    "+ fibonacci(n - 2)\n\n\nprint([fibonacci(i) for i in range(10)])\n",
    "#include <vector>\nint main() {\n\tstd::vector<int> v = {1, 2, 3};\n\tfor (int x : v) "
    "{\n\t\tprintf(\"%d\\n\", x);\n\t}\n\treturn 0;\n}\n",
    "{\"name\": \"mor\", \"version\": \"0.1.0\", \"layers\": [1, 2, 3], \"ok\": true, "
    "\"ratio\": 0.25}",
    "    indented line\n        more indented\n\n\n\ttabbed\t\tline   with   runs     "
    "of spaces   \n  \r\n trailing   ",
    "<|endoftext|>A new document starts here.<|endoftext|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "What is 2+2?<|im_end|>\n<|im_start|>assistant\n2+2 = 4.<|im_end|>",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 12345 123456789 3.14159 2.71828 "
    "-42 +17 1e-5 0x1F 0b1010 ٣٤٥ ①②③ Ⅻ",
    "URLs and paths: https://example.com/path?q=1&r=two#frag /usr/local/bin "
    "C:\\Windows\\System32 user@example.org",
    "Punctuation!!! Really??? Yes... --- (parens) [brackets] {braces} <angles> "
    "\"quotes\" 'single' `back` ~tilde^ |pipe| \\back\\slash",
    "Mixed scripts: hello世界, Grüße from 東京, привет from Москва, 😀 smiles.",
]

PARITY_TEXTS = [
    "", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", "\n\n\n", " \n", "\n ", " \n ",
    "a", "Hello", "Hello world", "Hello, world!", " Hello", "  Hello", "   Hello",
    "Hello ", "Hello  ", "Hello   ", "a b", "a  b", "a   b", "a    b", "a\tb", "a\t\tb",
    "a \tb", "a\t b", "a\nb", "a\n\nb", "a \nb", "a\n b", "a \n b", "a  \n  b",
    "a\r\nb", "a\r\n\r\nb", "a \r\n b", "a\n\n\n\n b", "\n\nHello", "Hello\n\n",
    "line one\nline two\n\nparagraph two\n", "   leading and trailing   ",
    "multiple   internal    spaces", "tabs\tand\nnewlines\r\nmixed", "\t\t\tx", "x\t\t\t",
    "a\u00a0b", "a\u00a0\u00a0b", "a \u00a0b", "a\u3000b", "a\u3000\u3000b", "a\u2003\u2003b",
    "a\u2028b", "a\u2029\u2029b", "a\x85\x85b", "a\x0b\x0cb", "a\x0b\x0b b", "\u200b\u200bzw",
    "x\x1c\x1d\x1e\x1fy", "nul\x00byte", "esc\x1b[31mred\x1b[0m", "\x7f\x80",
    "I'm you're we've they'll she'd it's don't can't", "I'M YOU'RE WE'VE THEY'LL SHE'D IT'S",
    "I'm'm 's 'S 'x 'ſ 'Ll 'lL", "''s '''", "rock 'n' roll", "l'homme c'est",
    "Der schnelle braune Fuchs springt über den faulen Hund.", "Größe ß ẞ Straße",
    "naïve café résumé façade Ångström", "e\u0301 combining e\u0301\u0301",
    "Zalgo z\u0351\u0352\u0353o",
    "你好，世界！这是一个测试。", "日本語のテキストとカタカナ ー", "한국어 텍스트입니다",
    "Россия и Українa", "مرحبا بالعالم", "नमस्ते दुनिया", "ไทยภาษา", "עברית",
    "😀", "😀😃", " 😀", "👍🏽", "❤️", "🇺🇸🇩🇪", "👨‍👩‍👧‍👦", "🏳️‍🌈", "a😀b", "😀 😀  😀",
    "Emoji: 😀👍🏽🇺🇸 and ❤️!", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚", "𠀀𠀁 CJK ext B",
    "0", "12", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-42",
    "a1b22c333d4444", "v1.2.3", "2024-01-01T12:34:56Z", "٣٤٥ ①②③ Ⅻ ½ ²³", " 123 456",
    "Numbers 12345 and 3.14159 and 1,000,000",
    "def foo(x):\n    return x ** 2  # comment\n",
    "    if (a && b) {\n        return;\n    }\n", "\tint x = 0;\n\t\tx++;\n",
    "for i in range(10):\n\tprint(i)\n\n\n", "x=1;y=2;z=x+y", "a->b && c || !d",
    "std::vector<int> v{1,2,3};", "<div class=\"x\">hi</div>", "{\"k\": [1, 2, {\"z\": null}]}",
    "https://example.com/a?b=c&d=e#f", "user@example.org", "C:\\path\\to\\file.txt",
    "Punctuation!!! ??? ... --- (parens)", "!!!", "?!?!", "...", "—–-", "«quotes» „so“",
    "<|endoftext|>", "<|endoftext|><|endoftext|>", "Hello<|endoftext|>world",
    "Hello <|endoftext|> world", "Hello  <|endoftext|>  world", "<|endoftext", "endoftext|>",
    "<|endoftext|", "<|endoftext|>>", "<<|endoftext|>", "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|><|im_end|>", "<|im_start|>", "<|im_sta", "<|begin_of_text|>Hi",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "<|reserved_special_token_3|>",
    "<s>hello</s>", " <mask> ", "a<mask>b", "a   <mask>   b", "<pad><pad>", "[CODE]  x",
    "a [CODE]\n\tb", "in new york city", "a--b---c----", ",,;; x,y;;z", "12,345;678--90",
    "naïve", "a naïve b", "naïveté", "xnaïve", "hello", "hello world",
    "supercalifragilistic", " supercalifragilistic", "antidisestablishmentarianism",
    "Mixture-of-Recursions", "lazy lazy lazy dog dog dog", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ababababababababababab", "=" * 80, "-" * 64 + "\n" + "#" * 40, " " * 33, "\n" * 17,
    "\t" * 9, " \t \n \r\n \u00a0 \u3000 ", "x" + " " * 20 + "y", "x" + "\n" * 5 + " " * 5 + "y",
    "Mixed scripts: hello世界, Grüße from 東京, привет from Москва, 😀 smiles.",
    "The quick brown fox jumps over the lazy dog.",
    "Serving systems batch requests together: continuous batching admits new requests.",
    "Emoji time 😀😃😄 👍🏽 ❤️ 🇺🇸🇩🇪 👨‍👩‍👧‍👦 🚀✨ and more 🎉🎉🎉!",
]


FUZZ_PIECES = [" ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\x85", "\x0b", "\u2028",
               "a", "Z", "é", "e\u0301", "ß", "日本", "中", "😀", "👍🏽", "\u200d", "1", "22", "4567",
               "٣", "①", "'", "'s", "'S", "'ll", "'LL", "'ſ", "'d", "'M", "s", "t", ".", ",", "-",
               "!!", "?", "(", ")", "{", "}", "<", ">", "|", "#", "$", "_", "\\", "\"", "`",
               "hello", "world", "lazy", "dog", " the", "naïve", "supercalifragilistic",
               "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
               "<s>", "</s>", "<mask>", "[CODE]", "<pad>", "new york", "--", ",;", ";;",
               "\x00", "\x1b", "\x7f"]


def fuzz_texts(n: int, seed: int = 99) -> list[str]:
    """Random concatenations of the pieces above: whitespace runs of every shape
    next to letters, digits, punctuation, contractions and special tokens."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 24)))
            for _ in range(n)]


def long_texts() -> list[str]:
    """A few long strings: one long word, a long mixed paragraph."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzäöüß日本語😀 \n\t0123456789.,!?'"
    rand = "".join(rng.choice(alphabet) for _ in range(3000))
    return ["".join(chr(0x4E00 + (i * 37) % 500) for i in range(400)),
            "x" * 1000, "1" * 500, rand, "\n\n".join(TRAIN_DOCS[:6])]


# ----------------------------------------------------------------------------
# Tokenizer styles
# ----------------------------------------------------------------------------

GPT2_SPECIALS = ["<|endoftext|>"]
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
SMOLLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>",
                   "<reponame>", "<file_sep>", "<filename>"]
OPTIONS_SPECIALS = ["<s>", "</s>", "<pad>"]
# Whole words put into the llama3 vocab without merges (exercise ignore_merges).
IGNORE_MERGES_WORDS = ["supercalifragilistic", " supercalifragilistic", "xnaïve",
                       "antidisestablishmentarianism"]


def _byte_level_form(text: str) -> str:
    mapping = _bytes_to_unicode()
    return "".join(mapping[b] for b in text.encode("utf-8"))


def _bytes_to_unicode() -> dict[int, str]:
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
          + list(range(0xAE, 0x100)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _train(pre_tokenizer, specials: list[str], docs=None, vocab_size=VOCAB_SIZE) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1,
                                  special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_DOCS if docs is None else docs, trainer=trainer)
    return tok


def _edit(tok: Tokenizer, fn) -> Tokenizer:
    data = json.loads(tok.to_str())
    fn(data)
    return Tokenizer.from_str(json.dumps(data))


def build_gpt2(**train) -> Tokenizer:
    tok = _train(pre.ByteLevel(add_prefix_space=False, use_regex=True), GPT2_SPECIALS, **train)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)

    def legacy_merges(data):
        data["model"]["merges"] = [f"{a} {b}" for a, b in data["model"]["merges"]]
    return _edit(tok, legacy_merges)


def build_llama3(**train) -> Tokenizer:
    tok = _train(pre.Sequence([
        pre.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        LLAMA3_SPECIALS, **train)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])

    def ignore_merges(data):
        model = data["model"]
        model["ignore_merges"] = True
        next_id = max(model["vocab"].values()) + 1
        for word in IGNORE_MERGES_WORDS:
            model["vocab"].setdefault(_byte_level_form(word), next_id)
            next_id += 1
    return _edit(tok, ignore_merges)


def build_smollm(**train) -> Tokenizer:
    tok = _train(pre.Sequence([
        pre.Digits(individual_digits=True),
        pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]),
        SMOLLM_SPECIALS, **train)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                              use_regex=True)
    return tok


def build_options(**train) -> Tokenizer:
    tok = _train(pre.ByteLevel(add_prefix_space=True, use_regex=True), OPTIONS_SPECIALS, **train)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True,
                                       normalized=False)])
    tok.add_tokens([
        AddedToken("naïve", single_word=True, normalized=True),
        AddedToken("[CODE]", rstrip=True, normalized=False),
        AddedToken("hello", normalized=True),  # already in the vocab
        AddedToken("new york", normalized=False),  # a space: not byte-level characters
    ])
    return tok


def build_splits(**train) -> Tokenizer:
    return _train(pre.Sequence([
        pre.Split("--", behavior="removed"),
        pre.Split(Regex(r"[,;]"), behavior="contiguous"),
        pre.Digits(individual_digits=False),
        pre.ByteLevel(add_prefix_space=False, use_regex=True)]), GPT2_SPECIALS, **train)


# Builders take optional training arguments (docs=, vocab_size=); the tokenizer
# benchmark (tools/bench/bench_tokenizer.py) trains them on its own text.
STYLES = {"gpt2": build_gpt2, "llama3": build_llama3, "smollm": build_smollm,
          "options": build_options, "splits": build_splits}


# ----------------------------------------------------------------------------
# Expected results
# ----------------------------------------------------------------------------

def _special_id(tok: Tokenizer, style: str, which: str):
    """The bos / eos id the C++ tokenizer reports for a style: from the
    post-processor template where it has one, else by well-known name."""
    name = {("llama3", "bos"): "<|begin_of_text|>", ("llama3", "eos"): "<|end_of_text|>",
            ("options", "bos"): "<s>", ("options", "eos"): "</s>"}.get(
                (style, which), "<|endoftext|>")
    return tok.token_to_id(name)


def _random_decodes(tok: Tokenizer, n_ids: int) -> list[list[int]]:
    rng = random.Random(1234)
    mapping = _bytes_to_unicode()
    byte_ids = [tok.token_to_id(mapping[b]) for b in range(256)]
    streams = []
    for i in range(NUM_RANDOM_DECODES):
        length = rng.randint(1, 40)
        if i % 2 == 0:
            ids = [rng.randrange(n_ids) for _ in range(length)]
        else:  # single bytes: lead bytes, continuation bytes and ASCII mixed
            pools = [range(0x80, 0xC0), range(0xC0, 0x100), range(0x20, 0x7F)]
            ids = [byte_ids[rng.choice(rng.choice(pools))] for _ in range(length)]
        if i % 10 == 5:
            ids.insert(rng.randrange(len(ids) + 1), n_ids + 2)  # unknown id: dropped
        streams.append(ids)
    # Hand-made byte sequences around the replacement rules.
    for raw in [b"\xe2\x82", b"\xe2\x82\xac", b"\xe2\x82A", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80",
                b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
                b"\x80\x80", b"\xe0\x80\x80", b"\xef\xbf\xbd", b"a\xffb\xfe", b"\xc3"]:
        streams.append([byte_ids[b] for b in raw])
    return streams


def expected_for(style: str, tok: Tokenizer, num_fuzz: int) -> dict:
    texts = (PARITY_TEXTS + long_texts() + fuzz_texts(num_fuzz) + TRAIN_DOCS
             + ["\n\n".join(TRAIN_DOCS)])
    encode = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        encode.append({
            "text": text, "ids": ids,
            "ids_special": tok.encode(text, add_special_tokens=True).ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    n = tok.get_vocab_size(with_added_tokens=True)
    decode = [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
               "text_skip": tok.decode(ids, skip_special_tokens=True)}
              for ids in _random_decodes(tok, n)]
    return {"vocab_size": n, "bos": _special_id(tok, style, "bos"),
            "eos": _special_id(tok, style, "eos"),
            "id_to_token": [tok.id_to_token(i) for i in range(n + 3)],
            "encode": encode, "decode": decode}


# ----------------------------------------------------------------------------
# The embedded default model's tokenizer on its own training corpus
# ----------------------------------------------------------------------------

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _kjv_cached(corpus_dir: str):
    """corpus.json when both KJV files exist with its sha256 sums, else None."""
    try:
        with open(os.path.join(corpus_dir, "corpus.json")) as f:
            info = json.load(f)
        for name in KJV_FILES:
            if _sha256(os.path.join(corpus_dir, name)) != info["files"][name]["sha256"]:
                return None
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_kjv_corpus(corpus_dir: str) -> dict:
    """The KJV corpus of the default model in corpus_dir (prepare_corpus.py runs
    unless it is cached there); exits non-zero when it cannot be built."""
    info = _kjv_cached(corpus_dir)
    if info is not None:
        print(f"{DEFAULT_MODEL_STYLE}: KJV corpus cached in {corpus_dir}", flush=True)
        return info
    print(f"{DEFAULT_MODEL_STYLE}: building the KJV corpus: {PREPARE_CORPUS} {corpus_dir}",
          flush=True)
    res = subprocess.run([sys.executable, PREPARE_CORPUS, corpus_dir],
                         capture_output=True, text=True)
    info = _kjv_cached(corpus_dir) if res.returncode == 0 else None
    if info is None:
        sys.exit(
            f"make_tokenizer_fixtures: FAILED to build the default model's training corpus "
            f"(exit {res.returncode}): {PREPARE_CORPUS} {corpus_dir}\n"
            f"It fetches the Debian packages bible-kjv-text and bible-kjv with "
            f"`apt-get download` (needs the Debian mirror; try `apt-get update`). The "
            f"default_model tokenizer parity fixture is not written without the corpus: put "
            f"prepare_corpus.py output (train.txt, val.txt, corpus.json) into {corpus_dir} "
            f"or give --kjv-corpus-dir.\n--- prepare_corpus.py output ---\n"
            f"{res.stdout}{res.stderr}")
    return info


def kjv_documents(path: str) -> list[str]:
    """The documents of a KJV file, split as tools/train/train.py splits them."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    docs = [d for d in text.split("\n\n") if d.strip()]
    if not docs or "\n\n".join(docs) != text:
        sys.exit(f"make_tokenizer_fixtures: {path} does not split into blank-line separated "
                 "documents that join back to the file")
    return docs


def _compact_encode(tok: Tokenizer, texts: list[str]) -> list[dict]:
    """encode entries with the fields that equal their fallback left out."""
    out = []
    for text, enc, enc_special in zip(texts, tok.encode_batch(texts, add_special_tokens=False),
                                      tok.encode_batch(texts, add_special_tokens=True)):
        entry = {"text": text, "ids": enc.ids}
        if enc_special.ids != enc.ids:
            entry["ids_special"] = enc_special.ids
        decoded = tok.decode(enc.ids, skip_special_tokens=False)
        if decoded != text:
            entry["decoded"] = decoded
        decoded_skip = tok.decode(enc.ids, skip_special_tokens=True)
        if decoded_skip != decoded:
            entry["decoded_skip"] = decoded_skip
        out.append(entry)
    return out


def write_default_model(out_dir: str, model_dir: str, corpus_dir: str, num_fuzz: int) -> dict:
    src = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(src):
        sys.exit(f"make_tokenizer_fixtures: no default model tokenizer at {src}")
    corpus_dir = os.path.abspath(corpus_dir)
    d = os.path.join(out_dir, DEFAULT_MODEL_STYLE)
    os.makedirs(d, exist_ok=True)
    for name in ("expected.json", "tokenizer.json"):  # no stale fixture when this fails
        if os.path.exists(os.path.join(d, name)):
            os.remove(os.path.join(d, name))
    info = ensure_kjv_corpus(corpus_dir)
    dst = os.path.join(d, "tokenizer.json")
    shutil.copyfile(src, dst)  # as is: the C++ side loads the very bytes the server loads
    tok = Tokenizer.from_file(dst)
    exp = expected_for(DEFAULT_MODEL_STYLE, tok, num_fuzz)
    exp["tokenizer_sha256"] = _sha256(dst)
    exp["corpora"] = []
    train_docs = None
    for name in KJV_FILES:
        path = os.path.join(corpus_dir, name)
        docs = kjv_documents(path)
        if len(docs) != info["files"][name]["documents"]:
            sys.exit(f"make_tokenizer_fixtures: {path} has {len(docs)} documents, "
                     f"corpus.json says {info['files'][name]['documents']}")
        train_docs = docs if train_docs is None else train_docs
        exp["corpora"].append({"name": f"kjv/{name}", "path": path,
                               "sha256": info["files"][name]["sha256"],
                               "bytes": os.path.getsize(path), "documents": len(docs),
                               "first": len(exp["encode"]), "count": len(docs)})
        exp["encode"] += _compact_encode(tok, docs)
    exp["encode"] += _compact_encode(tok, ["\n\n".join(train_docs[:KJV_JOINED_DOCS])])
    with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=True, separators=(",", ":"))
    n_ids = sum(len(e["ids"]) for e in exp["encode"])
    print(f"{DEFAULT_MODEL_STYLE} vocab={exp['vocab_size']} encode={len(exp['encode'])} "
          f"({n_ids} ids; " + ", ".join(f"{c['name']}: {c['documents']} documents"
                                        for c in exp["corpora"])
          + f") decode={len(exp['decode'])} "
          f"expected.json={os.path.getsize(os.path.join(d, 'expected.json')) >> 10} KiB",
          flush=True)
    return exp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate tokenizer parity fixtures.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--only", nargs="*", default=None,
                    help=f"styles to build (default: the trained ones; {DEFAULT_MODEL_STYLE} "
                         "is built only when named here)")
    ap.add_argument("--fuzz", type=int, default=400,
                    help="random strings of tricky pieces added to the parity corpus")
    ap.add_argument("--default-model-dir", default=os.path.join(REPO_ROOT, "models", "default"),
                    help=f"{DEFAULT_MODEL_STYLE}: the directory of the model's tokenizer.json")
    ap.add_argument("--kjv-corpus-dir", default=None,
                    help=f"{DEFAULT_MODEL_STYLE}: prepare_corpus.py output (built there unless "
                         "cached; default OUT/kjv)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    known = list(STYLES) + [DEFAULT_MODEL_STYLE]
    unknown = [s for s in args.only or [] if s not in known]
    if unknown:
        ap.error(f"unknown styles {unknown}; known: {known}")
    if args.only and DEFAULT_MODEL_STYLE in args.only:
        write_default_model(args.out, args.default_model_dir,
                            args.kjv_corpus_dir or os.path.join(args.out, "kjv"), args.fuzz)
    styles = [s for s in STYLES if not args.only or s in args.only]
    if not styles:
        print(f"{DEFAULT_MODEL_STYLE} written to {args.out} in {time.time() - t0:.1f}s")
        return 0
    for style in styles:
        tok = STYLES[style]()
        d = os.path.join(args.out, style)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        # Round trip through the file, as the C++ side sees it.
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        exp = expected_for(style, tok, args.fuzz)
        with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(exp, f, ensure_ascii=True)
        print(f"{style:8s} vocab={exp['vocab_size']} encode={len(exp['encode'])} "
              f"decode={len(exp['decode'])}", flush=True)
    with open(os.path.join(args.out, "train_corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(TRAIN_DOCS))
    manifest = {"format_version": FORMAT_VERSION, "tokenizers_version": tokenizers.__version__,
                "styles": styles}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(f"{len(styles)} tokenizer styles written to {args.out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
