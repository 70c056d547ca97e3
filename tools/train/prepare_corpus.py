#!/usr/bin/env python3
"""Build the training corpus of the default model from a Debian package.

The corpus is the King James Version of the Bible (public domain), shipped by
Debian's ``bible-kjv-text`` package in the compressed format of the Bible
Retrieval System, which the ``bible`` program of the ``bible-kjv`` package
expands. Nothing is committed: this script fetches both packages with
``apt-get download`` (no root needed, no installation), unpacks them with
``dpkg -x`` into ``<out>/debs`` and writes

  <out>/train.txt   chapters of the training split
  <out>/val.txt     every VAL_EVERY-th chapter (deterministic hold-out)
  <out>/corpus.json provenance: package versions, sha256 of the outputs, sizes

Each chapter is one document: its verses, one per line, without verse numbers,
documents separated by a blank line. The split is by chapter so that no
validation verse is seen in training.

Usage: prepare_corpus.py OUT_DIR
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import sys

PACKAGES = ("bible-kjv-text", "bible-kjv")
VAL_EVERY = 25          # chapter i is validation iff i % VAL_EVERY == VAL_EVERY - 1
ALL_VERSES = "gen1:1-rev22:21"
CHAPTER_HEAD = re.compile(r"^[1-3 ]*[A-Z][A-Za-z ]+ \d+$")
VERSE = re.compile(r"^\s+\d+ (.*)$")  # verses are indented; "1 Kings 3" is a heading


def log(msg: str) -> None:
    print(f"prepare_corpus: {msg}", file=sys.stderr, flush=True)


def fetch_packages(deb_dir: str) -> dict[str, str]:
    """apt-get download + dpkg -x each package; returns {package: version}."""
    os.makedirs(deb_dir, exist_ok=True)
    versions = {}
    for pkg in PACKAGES:
        debs = glob.glob(os.path.join(deb_dir, f"{pkg}_*.deb"))
        if not debs:
            log(f"apt-get download {pkg}")
            res = subprocess.run(["apt-get", "download", pkg], cwd=deb_dir,
                                 capture_output=True, text=True)
            debs = glob.glob(os.path.join(deb_dir, f"{pkg}_*.deb"))
            if res.returncode != 0 or not debs:
                sys.exit(f"prepare_corpus: `apt-get download {pkg}` failed "
                         f"(run `apt-get update` first?):\n{res.stderr}")
        deb = sorted(debs)[-1]
        subprocess.run(["dpkg", "-x", deb, os.path.join(deb_dir, "root")], check=True)
        versions[pkg] = os.path.basename(deb).split("_")[1]
    return versions


def dump_bible(deb_dir: str) -> str:
    root = os.path.join(deb_dir, "root")
    exe = os.path.join(root, "usr", "bin", "bible")
    data = os.path.join(root, "usr", "lib")
    res = subprocess.run([exe, "-p", data, "-l", "100000", ALL_VERSES],
                         capture_output=True, text=True, check=True)
    return res.stdout


def split_chapters(text: str) -> list[str]:
    """Chapters as documents: verse texts joined by newlines."""
    chapters: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        verse = VERSE.match(line)
        if verse:
            if not chapters:
                raise ValueError("verse before the first chapter heading")
            chapters[-1].append(verse.group(1).strip())
        elif CHAPTER_HEAD.match(line.strip()):
            chapters.append([])
        else:
            raise ValueError(f"unexpected line in the bible dump: {line!r}")
    return ["\n".join(c) for c in chapters if c]


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    versions = fetch_packages(os.path.join(args.out_dir, "debs"))
    chapters = split_chapters(dump_bible(os.path.join(args.out_dir, "debs")))
    if len(chapters) != 1189:  # the KJV has 1189 chapters
        sys.exit(f"prepare_corpus: expected 1189 chapters, got {len(chapters)}")
    train = [c for i, c in enumerate(chapters) if i % VAL_EVERY != VAL_EVERY - 1]
    val = [c for i, c in enumerate(chapters) if i % VAL_EVERY == VAL_EVERY - 1]
    info = {"source": "King James Version (public domain), Debian packages",
            "packages": versions, "chapters": len(chapters),
            "val_every": VAL_EVERY, "files": {}}
    for name, docs in (("train.txt", train), ("val.txt", val)):
        path = os.path.join(args.out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")
        info["files"][name] = {"documents": len(docs), "bytes": os.path.getsize(path),
                               "sha256": sha256(path)}
    with open(os.path.join(args.out_dir, "corpus.json"), "w") as f:
        json.dump(info, f, indent=2)
    log(json.dumps(info["files"]))


if __name__ == "__main__":
    main()
