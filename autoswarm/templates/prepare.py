"""
Data, tokenizer, dataloader and evaluation for an autoswarm workspace.

This file is LOCKED: experiments edit train.py only. Everything that defines the
metric lives here, so that every variant of train.py is measured the same way.

Run it once per machine, before any training run:

    python prepare.py                                  # prepare SOURCE (below) into the cache
    python prepare.py --source climbmix --num-shards 10
    python prepare.py --cache-dir /data/autoswarm --base-url http://mirror/climbmix

It is idempotent: when the cache is complete and verifies, a second run is a fast
no-op. It exits non-zero with a one-line message on failure.

After a training run, the orchestrator scores the model train.py handed over:

    python prepare.py evaluate [--model PATH]          # default $AUTOSWARM_MODEL

It loads the exported program, refuses graphs that could read files or see the
tokens they predict, and prints val_bpb and test_bpb in a summary block (see
"The locked evaluator" below).

Two sources:
- "stdlib": the *.py files of the running interpreter's standard library
  (~11 MB, no network), tokenized as raw bytes (vocab 256 + BOS). The default,
  sized for CPUs.
- "climbmix": parquet shards of karpathy/climbmix-400b-shuffle (autoresearch's
  dataset) downloaded from the Hugging Face hub, with an 8192-token BPE
  trained here with rustbpe and saved as a tiktoken encoding.

Three splits, disjoint: train, val and test. Only train.bin sits next to the
manifest; val and test live in <cache>/<source>/sealed/, which the orchestrator
hides from the training process (an empty directory in its sandbox) and shows
to the evaluator only.

train.py imports from this file (importing it has no side effects):
    SOURCE, EVAL_TOKENS, DataNotReady, ExportError, get_tokenizer, make_dataloader,
    evaluate_bpb, split_visible, export_model

Environment:
    AUTOSWARM_CACHE    cache directory for data and tokenizer (default ~/.cache/autoswarm).
                       The data lives outside the workspace so snapshots stay small.
    AUTOSWARM_MODEL    `evaluate`: the model file (train.py writes it there).
    AUTOSWARM_RUN_DIR  `evaluate`: when AUTOSWARM_MODEL is unset, the model is <dir>/model.pt2.
    AUTOSWARM_THREADS  `evaluate`: torch intra-op threads on CPU (as in train.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import http.client
import json
import logging
import math
import operator
import os
import re
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------
# Constants (the orchestrator's `init --template gpu` rewrites SOURCE to "climbmix";
# keep it a single simple line)

SOURCE = "stdlib"

# Evaluation size in tokens: the first EVAL_TOKENS targets of the val split, and
# as many of the test split. stdlib: 32 KiB of held-out source evaluates in ~1 s
# on one CPU thread, so that even a 2 s run stays short. climbmix: autoresearch's
# 40 x 524288 tokens.
EVAL_TOKENS = {"stdlib": 32_768, "climbmix": 40 * 524_288}

MANIFEST_VERSION = 2  # 2: three splits, val and test under SEALED_DIR
TOKEN_DTYPE = np.uint16  # both vocabularies (257 and 8192) fit in 16 bits
SPLITS = ("train", "val", "test")
SEALED_SPLITS = ("val", "test")
# The directory (under <cache>/<source>/) that holds the sealed splits and, for
# climbmix, the raw shards. The orchestrator mounts an empty directory over it
# in the training process's sandbox.
SEALED_DIR = "sealed"

# stdlib: sha256(relative path) % SPLIT_MODULUS picks a file's split: 0 is val,
# 1 is test (~10% each), the rest train. Hashing the path (not Python's salted
# hash()) makes the split the same in every process and on every machine with
# the same interpreter version.
SPLIT_MODULUS = 10
# Directories whose files teach little or are generated: test suites (huge,
# repetitive), third-party packages, codec tables (encodings/cp*.py) and the
# pydoc topic dump (a 750 KB string literal).
STDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data"}
)
STDLIB_MAX_FILE_BYTES = 200_000

# climbmix: same hub dataset and shard naming as autoresearch; the last shard is
# pinned as val and the one before it as test, so that every machine evaluates
# on the same text. Train shards are 0..num_shards-1 (num_shards < TEST_SHARD).
BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
MAX_SHARD = 6542
VAL_SHARD = MAX_SHARD
TEST_SHARD = MAX_SHARD - 1
DEFAULT_NUM_SHARDS = 10
TEXT_COLUMN = "text"
BPE_VOCAB_SIZE = 8192  # including the BOS special token
BPE_TRAIN_MAX_CHARS = 2_000_000_000  # text fed to the BPE trainer, from the train shards
DOWNLOAD_RETRIES = 5
DOWNLOAD_BACKOFF_S = 2.0  # first retry waits this long, then doubles
DOWNLOAD_TIMEOUT_S = 60.0

BOS_TEXT = "<|bos|>"


class DataNotReady(RuntimeError):
    """The prepared data is missing or does not match its manifest."""


class PrepareError(RuntimeError):
    """Preparing the data failed (download, integrity, tokenizer)."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: argument, else $AUTOSWARM_CACHE, else ~/.cache/autoswarm."""
    if cache_dir is None:
        cache_dir = os.environ.get("AUTOSWARM_CACHE") or Path.home() / ".cache" / "autoswarm"
    return Path(cache_dir).expanduser()


def source_dir(source: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / source


# ---------------------------------------------------------------------------
# Small utilities: progress bar, hashing, atomic writes


def progress(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    """A dependency-free progress bar on stderr (redrawn in place on a terminal,
    a line per 10% otherwise, so captured logs stay short)."""
    tty = sys.stderr.isatty()
    last_draw, last_decile = 0.0, -1
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        decile = done * 10 // max(total, 1)
        if tty and (now - last_draw > 0.1 or done == total):
            filled = min(done * 30 // max(total, 1), 30)
            sys.stderr.write(f"\r{desc} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            sys.stderr.flush()
            last_draw = now
        elif not tty and decile != last_decile:
            sys.stderr.write(f"{desc}: {done}/{total}\n")
            last_decile = decile
    if tty:
        sys.stderr.write("\n")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Tokenizers
#
# stdlib uses bytes: no training step, exact round-trip, and bpb equals the
# per-token loss in bits, which makes the metric easy to reason about on a toy
# corpus. climbmix uses a BPE, as autoresearch does: bytes would make 2048-token
# rows cover only ~2 KB of text.


class Tokenizer:
    """What train.py and evaluate_bpb need: vocab size, BOS id, per-token byte lengths."""

    vocab_size: int
    bos_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of every token id; 0 for special tokens (excluded from bpb)."""
        raise NotImplementedError


class ByteTokenizer(Tokenizer):
    def __init__(self) -> None:
        self.vocab_size = 257
        self.bos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        lengths = np.ones(self.vocab_size, dtype=np.int64)
        lengths[self.bos_id] = 0
        return lengths


class BPETokenizer(Tokenizer):
    """A tiktoken encoding built from ranks trained by rustbpe; BOS is the last id."""

    def __init__(self, pattern: str, ranks: dict[bytes, int]) -> None:
        import tiktoken

        self.bos_id = len(ranks)
        self.vocab_size = len(ranks) + 1
        self._ranks = ranks
        self.encoding = tiktoken.Encoding(
            name="autoswarm-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={BOS_TEXT: self.bos_id}
        )

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode([i for i in ids if i != self.bos_id])

    def token_bytes(self) -> np.ndarray:
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, rank in self._ranks.items():
            lengths[rank] = len(token)
        return lengths

    def save(self, path: Path) -> None:
        """tiktoken's text format: one "base64(token bytes) rank" line per token."""
        lines = [
            f"{base64.b64encode(token).decode()} {rank}"
            for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1])
        ]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, pattern: str) -> BPETokenizer:
        ranks = {}
        for line in path.read_text().splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        return cls(pattern, ranks)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        import rustbpe

        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), vocab_size - 1)  # one id kept for BOS
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        return cls(trainer.get_pattern(), ranks)


# ---------------------------------------------------------------------------
# Token files: each split is one flat uint16 array, every document preceded by BOS


def write_tokens(docs: Iterable[np.ndarray], path: Path, bos_id: int) -> dict[str, Any]:
    """Stream documents to `path` (atomically); returns counts and the file's sha256."""
    tmp = path.with_name(path.name + ".tmp")
    digest = hashlib.sha256()
    n_docs = n_tokens = 0
    bos = np.array([bos_id], dtype=TOKEN_DTYPE).tobytes()
    with open(tmp, "wb") as f:
        for doc in docs:
            payload = bos + doc.astype(TOKEN_DTYPE).tobytes()
            f.write(payload)
            digest.update(payload)
            n_docs += 1
            n_tokens += 1 + len(doc)
    os.replace(tmp, path)
    return {"documents": n_docs, "tokens": n_tokens, "sha256": digest.hexdigest()}


def unigram_bpb(train_path: Path, val_path: Path, token_bytes: np.ndarray, eval_tokens: int) -> float:
    """Bits per byte of the eval targets under the train split's unigram distribution
    (add-one smoothed): the score of a model that ignores context. A trained model
    should be well below it."""
    vocab = len(token_bytes)
    train = np.memmap(train_path, dtype=TOKEN_DTYPE, mode="r")
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    log2p = np.log2(counts / counts.sum())
    targets = np.asarray(np.memmap(val_path, dtype=TOKEN_DTYPE, mode="r")[1 : eval_tokens + 1])
    nbytes = token_bytes[targets]
    keep = nbytes > 0
    return float(-log2p[targets[keep]].sum() / nbytes.sum())


# ---------------------------------------------------------------------------
# Source "stdlib"


def stdlib_files(root: Path) -> list[Path]:
    """The corpus files under `root`, in a deterministic (sorted relative path) order."""
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in STDLIB_SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if not path.is_file() or path.stat().st_size > STDLIB_MAX_FILE_BYTES:
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_val_file(rel_path: str) -> bool:
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % VAL_MODULUS == 0


def read_stdlib(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    """{split: [(relative path, file bytes)]}. Files that are not UTF-8 are skipped
    (a handful of test fixtures at most) so that the text is always decodable."""
    splits: dict[str, list[tuple[str, bytes]]] = {"train": [], "val": []}
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        splits["val" if is_val_file(rel) else "train"].append((rel, data))
    return splits


def stdlib_fingerprint(splits: dict[str, list[tuple[str, bytes]]]) -> dict[str, Any]:
    """File count, bytes and sha256 of the concatenated text per split."""
    out = {}
    for name, docs in splits.items():
        digest = hashlib.sha256()
        for rel, data in docs:
            digest.update(rel.encode("utf-8") + b"\0" + data + b"\0")
        out[name] = {"files": len(docs), "bytes": sum(len(d) for _, d in docs), "sha256": digest.hexdigest()}
    return out


def prepare_stdlib(cache_dir: Path | None = None, root: Path | None = None) -> dict[str, Any]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out_dir = source_dir("stdlib", cache_dir)
    splits = read_stdlib(root)
    if not splits["train"] or not splits["val"]:
        raise PrepareError(f"no usable *.py files for both splits under {root}")
    fingerprint = stdlib_fingerprint(splits)

    existing = read_manifest(out_dir)
    if existing is not None and existing.get("source_info", {}).get("splits") == fingerprint:
        try:
            verify_manifest(out_dir, existing)
            print(f"stdlib data already prepared in {out_dir} (verified)", file=sys.stderr)
            return existing
        except DataNotReady as e:
            print(f"cached stdlib data is stale ({e}); rebuilding", file=sys.stderr)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten
    tokenizer = ByteTokenizer()
    write_json_atomic(out_dir / "tokenizer.json", {"kind": "bytes", "vocab_size": 257, "bos_id": 256})
    split_info = {}
    for name, docs in splits.items():
        arrays = (np.frombuffer(data, dtype=np.uint8) for _, data in docs)
        split_info[name] = write_tokens(progress(arrays, len(docs), f"tokenize {name}"), out_dir / f"{name}.bin", 256)
    manifest = {
        "version": MANIFEST_VERSION,
        "source": "stdlib",
        "tokenizer": {"kind": "bytes", "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id},
        "splits": split_info,
        "source_info": {"root": str(root), "python": sys.version.split()[0], "splits": fingerprint},
        "unigram_bpb": unigram_bpb(
            out_dir / "train.bin", out_dir / "val.bin", tokenizer.token_bytes(), EVAL_TOKENS["stdlib"]
        ),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)  # written last: its presence means complete
    return manifest


# ---------------------------------------------------------------------------
# Source "climbmix": download with retries, verify, train the BPE, tokenize


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def check_parquet(path: Path) -> int:
    """Raise PrepareError unless `path` is a readable parquet file; return its row count."""
    import pyarrow.parquet as pq

    if path.stat().st_size < 12:
        raise PrepareError(f"{path.name} is too small to be a parquet file")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, os.SEEK_END)
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise PrepareError(f"{path.name} is not a parquet file (bad magic bytes)")
    try:
        pf = pq.ParquetFile(path)
        if TEXT_COLUMN not in pf.schema_arrow.names:
            raise PrepareError(f"{path.name} has no '{TEXT_COLUMN}' column")
        return int(pf.metadata.num_rows)
    except PrepareError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt footers
        raise PrepareError(f"{path.name} is not a readable parquet file: {e}") from e


def download_shard(
    url: str, dest: Path, *, retries: int = DOWNLOAD_RETRIES, backoff_s: float = DOWNLOAD_BACKOFF_S
) -> dict[str, Any]:
    """Download `url` to `dest` atomically (.tmp then rename), retrying with
    exponential back-off on network errors, server errors and corrupt payloads.
    Returns {"sha256", "bytes", "rows"}. Never leaves a partial file at `dest`."""
    tmp = dest.with_name(dest.name + ".tmp")
    last_error: Exception | None = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            digest = hashlib.sha256()
            size = 0
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
                expected = response.headers.get("Content-Length")
                while block := response.read(1 << 20):
                    f.write(block)
                    digest.update(block)
                    size += len(block)
            if expected is not None and int(expected) != size:
                raise PrepareError(f"{dest.name}: got {size} bytes, expected {expected}")
            rows = check_parquet(tmp)
            os.replace(tmp, dest)
            return {"sha256": digest.hexdigest(), "bytes": size, "rows": rows}
        except urllib.error.HTTPError as e:
            last_error = e
            tmp.unlink(missing_ok=True)
            if 400 <= e.code < 500 and e.code not in (408, 429):
                break  # a missing file will not appear by retrying
        except (urllib.error.URLError, http.client.HTTPException, OSError, PrepareError) as e:
            last_error = e
            tmp.unlink(missing_ok=True)
        print(f"download {dest.name}: attempt {attempt + 1}/{retries} failed: {last_error}", file=sys.stderr)
    raise PrepareError(f"could not download {url}: {last_error}")


def shard_indices(num_shards: int) -> list[int]:
    if not 1 <= num_shards <= MAX_SHARD:
        raise PrepareError(f"--num-shards must be in 1..{MAX_SHARD}, got {num_shards}")
    return [*range(num_shards), VAL_SHARD]


def fetch_shards(
    shards_dir: Path, indices: list[int], base_url: str, *, retries: int, backoff_s: float
) -> dict[str, dict[str, Any]]:
    """Download missing shards; verify the ones already there against shards.json."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    record_path = shards_dir / "shards.json"
    try:
        record: dict[str, dict[str, Any]] = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}  # missing or damaged: every shard is re-verified by download
    for tmp in shards_dir.glob("*.tmp"):
        tmp.unlink()  # left over from an interrupted run
    for index in progress(indices, len(indices), "shards"):
        name = shard_name(index)
        path = shards_dir / name
        known = record.get(name)
        if path.exists() and known and path.stat().st_size == known["bytes"] and sha256_file(path) == known["sha256"]:
            continue
        record[name] = download_shard(f"{base_url.rstrip('/')}/{name}", path, retries=retries, backoff_s=backoff_s)
        write_json_atomic(record_path, record)
    return {shard_name(i): record[shard_name(i)] for i in indices}


def iter_texts(paths: list[Path], max_chars: int | None = None) -> Iterator[str]:
    import pyarrow.parquet as pq

    seen = 0
    for path in paths:
        pf = pq.ParquetFile(path)
        for group in range(pf.num_row_groups):
            for text in pf.read_row_group(group, columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist():
                if text:
                    yield text
                    seen += len(text)
                    if max_chars is not None and seen >= max_chars:
                        return


def iter_docs(tokenizer: BPETokenizer, paths: list[Path], batch: int = 1024) -> Iterator[np.ndarray]:
    """Tokenize documents in batches (tiktoken encodes a batch on several threads)."""
    buffer: list[str] = []
    for text in iter_texts(paths):
        buffer.append(text)
        if len(buffer) == batch:
            yield from (np.asarray(ids, dtype=TOKEN_DTYPE) for ids in tokenizer.encode_batch(buffer))
            buffer = []
    if buffer:
        yield from (np.asarray(ids, dtype=TOKEN_DTYPE) for ids in tokenizer.encode_batch(buffer))


def prepare_climbmix(
    cache_dir: Path | None = None,
    *,
    num_shards: int = DEFAULT_NUM_SHARDS,
    base_url: str = BASE_URL,
    vocab_size: int = BPE_VOCAB_SIZE,
    retries: int = DOWNLOAD_RETRIES,
    backoff_s: float = DOWNLOAD_BACKOFF_S,
) -> dict[str, Any]:
    out_dir = source_dir("climbmix", cache_dir)
    indices = shard_indices(num_shards)
    shards = fetch_shards(out_dir / "shards", indices, base_url, retries=retries, backoff_s=backoff_s)

    existing = read_manifest(out_dir)
    wanted = {"shards": shards, "bpe_vocab_size": vocab_size}
    if existing is not None and existing.get("source_info") == wanted:
        try:
            verify_manifest(out_dir, existing)
            print(f"climbmix data already prepared in {out_dir} (verified)", file=sys.stderr)
            return existing
        except DataNotReady as e:
            print(f"cached climbmix data is stale ({e}); rebuilding", file=sys.stderr)

    (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten
    train_paths = [out_dir / "shards" / shard_name(i) for i in indices if i != VAL_SHARD]
    val_paths = [out_dir / "shards" / shard_name(VAL_SHARD)]
    print(f"training a {vocab_size}-token BPE on up to {BPE_TRAIN_MAX_CHARS:,} chars", file=sys.stderr)
    try:
        tokenizer = BPETokenizer.train(iter_texts(train_paths, BPE_TRAIN_MAX_CHARS), vocab_size)
    except Exception as e:
        raise PrepareError(f"BPE training failed: {e}") from e
    sample = "def f(x):\n    return x ** 2  # héllo wörld ✓"
    if tokenizer.decode(tokenizer.encode(sample)) != sample:
        raise PrepareError("BPE tokenizer does not round-trip text")
    tokenizer.save(out_dir / "tokenizer.tiktoken")
    pattern = tokenizer.encoding._pat_str

    split_info = {}
    for name, paths in (("val", val_paths), ("train", train_paths)):
        rows = sum(shards[p.name]["rows"] for p in paths)
        docs = progress(iter_docs(tokenizer, paths), rows, f"tokenize {name}")
        split_info[name] = write_tokens(docs, out_dir / f"{name}.bin", tokenizer.bos_id)
    manifest = {
        "version": MANIFEST_VERSION,
        "source": "climbmix",
        "tokenizer": {
            "kind": "bpe",
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "pattern": pattern,
            "sha256": sha256_file(out_dir / "tokenizer.tiktoken"),
        },
        "splits": split_info,
        "source_info": wanted,
        "unigram_bpb": unigram_bpb(
            out_dir / "train.bin", out_dir / "val.bin", tokenizer.token_bytes(), EVAL_TOKENS["climbmix"]
        ),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------
# Loading the prepared data (used by train.py)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return manifest if manifest.get("version") == MANIFEST_VERSION else None


def verify_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Check the token files (size and sha256) and the tokenizer file against the manifest."""
    for name, info in manifest["splits"].items():
        path = out_dir / f"{name}.bin"
        if not path.exists():
            raise DataNotReady(f"{path} is missing")
        if path.stat().st_size != info["tokens"] * np.dtype(TOKEN_DTYPE).itemsize:
            raise DataNotReady(f"{path} has the wrong size")
        if sha256_file(path) != info["sha256"]:
            raise DataNotReady(f"{path} does not match its sha256 in the manifest")
    if manifest["tokenizer"]["kind"] == "bpe" and sha256_file(out_dir / "tokenizer.tiktoken") != manifest[
        "tokenizer"
    ].get("sha256"):
        raise DataNotReady("tokenizer.tiktoken does not match the manifest")


@dataclass(frozen=True)
class Prepared:
    source: str
    directory: Path
    manifest: dict[str, Any]

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.directory / f"{split}.bin", dtype=TOKEN_DTYPE, mode="r")


@functools.cache
def _load(source: str, cache: str) -> Prepared:
    out_dir = Path(cache) / source
    manifest = read_manifest(out_dir)
    hint = f"run `python prepare.py` first (cache: {cache}, source: {source})"
    if manifest is None:
        raise DataNotReady(f"no prepared data in {out_dir}: {hint}")
    try:
        verify_manifest(out_dir, manifest)
    except DataNotReady as e:
        raise DataNotReady(f"{e}: {hint}") from e
    return Prepared(source, out_dir, manifest)


def load_prepared(source: str = SOURCE) -> Prepared:
    """The verified prepared data for `source`; raises DataNotReady with a hint if absent."""
    return _load(source, str(cache_root()))


def get_tokenizer(source: str = SOURCE) -> Tokenizer:
    prepared = load_prepared(source)
    info = prepared.manifest["tokenizer"]
    if info["kind"] == "bytes":
        return ByteTokenizer()
    return BPETokenizer.load(prepared.directory / "tokenizer.tiktoken", info["pattern"])


# ---------------------------------------------------------------------------
# Dataloader
#
# Rows are windows of seq_len + 1 tokens starting at uniformly random offsets of
# the split's token stream (documents concatenated, each after a BOS), drawn with
# replacement from a generator seeded by `seed`. Not BOS-aligned like autoresearch:
# stdlib files average ~16 KB, far longer than a row, so rows that start at a
# document start would only ever show file headers. No padding, every token is
# a target.


def make_dataloader(
    split: str, batch_size: int, seq_len: int, seed: int, device: Any = "cpu", source: str = SOURCE
) -> Iterator[tuple[Any, Any]]:
    """Endless (x, y) int64 tensors of shape (batch_size, seq_len); y is x shifted by one."""
    import torch

    tokens = load_prepared(source).tokens(split)
    if len(tokens) <= seq_len + 1:
        raise DataNotReady(f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    offsets = np.arange(seq_len + 1)
    pin = torch.device(device).type == "cuda"
    while True:
        starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
        rows = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64))
        if pin:
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=True)
        yield rows[:, :-1], rows[:, 1:]


# ---------------------------------------------------------------------------
# Evaluation: bits per byte
#
# The metric is autoresearch's: the summed cross-entropy (nats) of the targets,
# over the summed UTF-8 byte length of those targets, in bits. Targets that are
# special tokens (BOS) count in neither sum. Dividing by bytes, not tokens, makes
# the number independent of the vocabulary.


def bits_per_byte(model: Any, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int, batch_size: int) -> float:
    """bpb of `model` on the targets tokens[1:], read in rows of seq_len targets.

    `model(x)` must return logits of shape (B, T, vocab). The caller sets eval
    mode and any autocast context."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    lengths = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    all_tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n_targets = len(all_tokens) - 1
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)

    def score(rows: torch.Tensor) -> None:
        nonlocal total_nats, total_bytes
        rows = rows.to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        logits = model(x).float()
        nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        nbytes = lengths[y.reshape(-1)]
        total_nats += (nats * (nbytes > 0)).sum(dtype=torch.float64)
        total_bytes += nbytes.sum()

    with torch.no_grad():
        n_full = n_targets // seq_len
        full = all_tokens[: n_full * seq_len + 1]
        windows = full.unfold(0, seq_len + 1, seq_len) if n_full else full[:0].reshape(0, seq_len + 1)
        for i in range(0, n_full, batch_size):
            score(windows[i : i + batch_size])
        if n_targets % seq_len:
            score(all_tokens[n_full * seq_len :].unsqueeze(0))
    if total_bytes.item() == 0:
        raise ValueError("no scorable targets (all special tokens?)")
    return float(total_nats.item() / (math.log(2) * total_bytes.item()))


def evaluate_bpb(model: Any, seq_len: int, batch_size: int, source: str = SOURCE) -> float:
    """val_bpb: bits per byte on the first EVAL_TOKENS targets of the validation split.

    The targets are the same whatever seq_len is; seq_len only sets how much
    context the model gets (rows are consecutive, not overlapping)."""
    prepared = load_prepared(source)
    tokens = prepared.tokens("val")[: EVAL_TOKENS[source] + 1]
    return bits_per_byte(model, tokens, get_tokenizer(source).token_bytes(), seq_len, batch_size)


# ---------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for autoswarm's train.py.")
    parser.add_argument("--source", choices=["stdlib", "climbmix"], default=SOURCE)
    parser.add_argument("--cache-dir", default=None, help="default: $AUTOSWARM_CACHE or ~/.cache/autoswarm")
    parser.add_argument("--num-shards", type=int, default=DEFAULT_NUM_SHARDS, help="climbmix training shards")
    parser.add_argument("--base-url", default=BASE_URL, help="climbmix shard server (a mirror, or a test server)")
    args = parser.parse_args(argv)

    started = time.time()
    try:
        if args.source == "stdlib":
            manifest = prepare_stdlib(cache_root(args.cache_dir))
        else:
            manifest = prepare_climbmix(
                cache_root(args.cache_dir),
                num_shards=args.num_shards,
                base_url=args.base_url,
                retries=DOWNLOAD_RETRIES,
                backoff_s=DOWNLOAD_BACKOFF_S,
            )
    except (PrepareError, DataNotReady, OSError) as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        return 1
    splits = manifest["splits"]
    print(
        f"prepared {manifest['source']} in {source_dir(manifest['source'], cache_root(args.cache_dir))} "
        f"({time.time() - started:.1f}s): train {splits['train']['tokens']:,} tokens, "
        f"val {splits['val']['tokens']:,} tokens, vocab {manifest['tokenizer']['vocab_size']}, "
        f"unigram baseline {manifest['unigram_bpb']:.4f} bpb"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
