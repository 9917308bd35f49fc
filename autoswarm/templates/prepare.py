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
    {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "encodings",
        "pydoc_data",
    }
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


class ExportError(RuntimeError):
    """torch.export could not capture the model as a static-shape program."""


class EvaluationError(RuntimeError):
    """The evaluator refused the model, or could not load or score it."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: argument, else $AUTOSWARM_CACHE, else ~/.cache/autoswarm."""
    if cache_dir is None:
        cache_dir = os.environ.get("AUTOSWARM_CACHE") or Path.home() / ".cache" / "autoswarm"
    return Path(cache_dir).expanduser()


def source_dir(source: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / source


def split_file(split: str) -> str:
    """Where a split's token file lives, relative to the source directory."""
    return f"{split}.bin" if split == "train" else f"{SEALED_DIR}/{split}.bin"


def remove_unsealed_copies(out_dir: Path) -> None:
    """Delete val/test token files next to the manifest (the version-1 layout): left
    there, they would be visible to the training process."""
    for split in SEALED_SPLITS:
        (out_dir / f"{split}.bin").unlink(missing_ok=True)


def sealed_but_hidden(out_dir: Path) -> bool:
    """True when this process sees the sealed directory empty: a sandbox hides it
    (the orchestrator mounts an empty directory over it), and rebuilding here
    would be wrong."""
    sealed = out_dir / SEALED_DIR
    return sealed.is_dir() and not any(sealed.iterdir())


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
            name="autoswarm-bpe",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={BOS_TEXT: self.bos_id},
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


def unigram_bpb(
    train_path: Path, val_path: Path, token_bytes: np.ndarray, eval_tokens: int
) -> float:
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


def stdlib_split(rel_path: str) -> str:
    """The split of a library file: "val", "test" or "train", from sha256 of its path."""
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % SPLIT_MODULUS
    return "val" if bucket == 0 else "test" if bucket == 1 else "train"


def is_val_file(rel_path: str) -> bool:
    return stdlib_split(rel_path) == "val"


def is_test_file(rel_path: str) -> bool:
    return stdlib_split(rel_path) == "test"


def read_stdlib(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    """{split: [(relative path, file bytes)]}. Files that are not UTF-8 are skipped
    (a handful of test fixtures at most) so that the text is always decodable."""
    splits: dict[str, list[tuple[str, bytes]]] = {name: [] for name in SPLITS}
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        splits[stdlib_split(rel)].append((rel, data))
    return splits


def stdlib_fingerprint(splits: dict[str, list[tuple[str, bytes]]]) -> dict[str, Any]:
    """File count, bytes and sha256 of the concatenated text per split."""
    out = {}
    for name, docs in splits.items():
        digest = hashlib.sha256()
        for rel, data in docs:
            digest.update(rel.encode("utf-8") + b"\0" + data + b"\0")
        out[name] = {
            "files": len(docs),
            "bytes": sum(len(d) for _, d in docs),
            "sha256": digest.hexdigest(),
        }
    return out


def refuse_if_hidden(out_dir: Path) -> None:
    """Never rebuild (or download) into a sealed directory a sandbox has emptied."""
    if read_manifest(out_dir) is not None and sealed_but_hidden(out_dir):
        raise PrepareError(
            f"{out_dir / SEALED_DIR} is empty in this process (a sandbox hides the sealed splits): "
            f"run `python prepare.py` outside the sandbox, or delete that directory to rebuild"
        )


def reuse_cache(out_dir: Path, existing: dict[str, Any], source: str) -> bool:
    """Whether a matching manifest's files all verify (else say why, and rebuild)."""
    try:
        verify_manifest(out_dir, existing)
    except DataNotReady as e:
        print(f"cached {source} data is stale ({e}); rebuilding", file=sys.stderr)
        return False
    print(f"{source} data already prepared in {out_dir} (verified)", file=sys.stderr)
    return True


def prepare_stdlib(cache_dir: Path | None = None, root: Path | None = None) -> dict[str, Any]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out_dir = source_dir("stdlib", cache_dir)
    refuse_if_hidden(out_dir)
    splits = read_stdlib(root)
    if not all(splits.values()):
        raise PrepareError(
            f"no usable *.py files for all three splits (train, val, test) under {root}"
        )
    fingerprint = stdlib_fingerprint(splits)

    existing = read_manifest(out_dir)
    if (
        existing is not None
        and existing.get("source_info", {}).get("splits") == fingerprint
        and reuse_cache(out_dir, existing, "stdlib")
    ):
        return existing

    (out_dir / SEALED_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten
    remove_unsealed_copies(out_dir)
    tokenizer = ByteTokenizer()
    write_json_atomic(
        out_dir / "tokenizer.json", {"kind": "bytes", "vocab_size": 257, "bos_id": 256}
    )
    split_info = {}
    for name, docs in splits.items():
        arrays = (np.frombuffer(data, dtype=np.uint8) for _, data in docs)
        info = write_tokens(
            progress(arrays, len(docs), f"tokenize {name}"), out_dir / split_file(name), 256
        )
        split_info[name] = {"path": split_file(name), **info}
    manifest = {
        "version": MANIFEST_VERSION,
        "source": "stdlib",
        "tokenizer": {
            "kind": "bytes",
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
        },
        "splits": split_info,
        "source_info": {"root": str(root), "python": sys.version.split()[0], "splits": fingerprint},
        **unigram_baselines(out_dir, tokenizer.token_bytes(), EVAL_TOKENS["stdlib"]),
    }
    write_json_atomic(
        out_dir / "manifest.json", manifest
    )  # written last: its presence means complete
    return manifest


def unigram_baselines(out_dir: Path, token_bytes: np.ndarray, eval_tokens: int) -> dict[str, float]:
    train = out_dir / split_file("train")
    return {
        "unigram_bpb": unigram_bpb(train, out_dir / split_file("val"), token_bytes, eval_tokens),
        "unigram_test_bpb": unigram_bpb(
            train, out_dir / split_file("test"), token_bytes, eval_tokens
        ),
    }


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
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                open(tmp, "wb") as f,
            ):
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
        print(
            f"download {dest.name}: attempt {attempt + 1}/{retries} failed: {last_error}",
            file=sys.stderr,
        )
    raise PrepareError(f"could not download {url}: {last_error}")


def shard_indices(num_shards: int) -> list[int]:
    if not 1 <= num_shards < TEST_SHARD:
        raise PrepareError(f"--num-shards must be in 1..{TEST_SHARD - 1}, got {num_shards}")
    return [*range(num_shards), TEST_SHARD, VAL_SHARD]


def shards_dir(out_dir: Path) -> Path:
    """Raw shards are sealed too: the val and test shards are the sealed text itself."""
    return out_dir / SEALED_DIR / "shards"


def migrate_shards(out_dir: Path) -> None:
    """Move <cache>/climbmix/shards (the version-1 layout) under the sealed directory,
    so that neither a download is repeated nor raw val text stays visible to training."""
    old, new = out_dir / "shards", shards_dir(out_dir)
    if not old.is_dir():
        return
    if not new.exists():
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
        print(f"moved {old} to {new}", file=sys.stderr)
        return

    # Both exist (an interrupted migration, or an old checkout ran since): keep what
    # the new directory has, move the rest over with its shards.json record.
    def record(directory: Path) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads((directory / "shards.json").read_text())
            return loaded
        except (OSError, ValueError):
            return {}

    old_record, new_record = record(old), record(new)
    for entry in sorted(old.iterdir()):
        if entry.name == "shards.json" or (new / entry.name).exists():
            entry.unlink()
            continue
        os.rename(entry, new / entry.name)
        if entry.name in old_record:
            new_record.setdefault(entry.name, old_record[entry.name])
    write_json_atomic(new / "shards.json", new_record)
    old.rmdir()
    print(f"merged {old} into {new}", file=sys.stderr)


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
        if (
            path.exists()
            and known
            and path.stat().st_size == known["bytes"]
            and sha256_file(path) == known["sha256"]
        ):
            continue
        record[name] = download_shard(
            f"{base_url.rstrip('/')}/{name}", path, retries=retries, backoff_s=backoff_s
        )
        write_json_atomic(record_path, record)
    return {shard_name(i): record[shard_name(i)] for i in indices}


def iter_texts(paths: list[Path], max_chars: int | None = None) -> Iterator[str]:
    import pyarrow.parquet as pq

    seen = 0
    for path in paths:
        pf = pq.ParquetFile(path)
        for group in range(pf.num_row_groups):
            for text in (
                pf.read_row_group(group, columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist()
            ):
                if text:
                    yield text
                    seen += len(text)
                    if max_chars is not None and seen >= max_chars:
                        return


def iter_docs(
    tokenizer: BPETokenizer, paths: list[Path], batch: int = 1024
) -> Iterator[np.ndarray]:
    """Tokenize documents in batches (tiktoken encodes a batch on several threads)."""
    buffer: list[str] = []
    for text in iter_texts(paths):
        buffer.append(text)
        if len(buffer) == batch:
            yield from (
                np.asarray(ids, dtype=TOKEN_DTYPE) for ids in tokenizer.encode_batch(buffer)
            )
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
    refuse_if_hidden(out_dir)
    migrate_shards(out_dir)
    raw = shards_dir(out_dir)
    shards = fetch_shards(raw, indices, base_url, retries=retries, backoff_s=backoff_s)

    existing = read_manifest(out_dir)
    wanted = {"shards": shards, "bpe_vocab_size": vocab_size}
    if (
        existing is not None
        and existing.get("source_info") == wanted
        and reuse_cache(out_dir, existing, "climbmix")
    ):
        return existing

    (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten
    remove_unsealed_copies(out_dir)
    paths = {
        "train": [raw / shard_name(i) for i in indices if i not in (VAL_SHARD, TEST_SHARD)],
        "val": [raw / shard_name(VAL_SHARD)],
        "test": [raw / shard_name(TEST_SHARD)],
    }
    print(
        f"training a {vocab_size}-token BPE on up to {BPE_TRAIN_MAX_CHARS:,} chars", file=sys.stderr
    )
    try:
        tokenizer = BPETokenizer.train(iter_texts(paths["train"], BPE_TRAIN_MAX_CHARS), vocab_size)
    except Exception as e:
        raise PrepareError(f"BPE training failed: {e}") from e
    sample = "def f(x):\n    return x ** 2  # héllo wörld ✓"
    if tokenizer.decode(tokenizer.encode(sample)) != sample:
        raise PrepareError("BPE tokenizer does not round-trip text")
    tokenizer.save(out_dir / "tokenizer.tiktoken")
    pattern = tokenizer.encoding._pat_str

    split_info = {}
    for name in ("val", "test", "train"):
        rows = sum(shards[p.name]["rows"] for p in paths[name])
        docs = progress(iter_docs(tokenizer, paths[name]), rows, f"tokenize {name}")
        info = write_tokens(docs, out_dir / split_file(name), tokenizer.bos_id)
        split_info[name] = {"path": split_file(name), **info}
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
        **unigram_baselines(out_dir, tokenizer.token_bytes(), EVAL_TOKENS["climbmix"]),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------
# Loading the prepared data (used by train.py and the evaluator)
#
# Each split is verified (size and sha256) the first time a process reads it, so
# that training verifies only what it needs: the sealed splits are not visible to
# it, and it must still start.


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of `out_dir`, or None when it is missing, unreadable or of an older
    version (which makes prepare.py rebuild the cache)."""
    path = out_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return manifest if manifest.get("version") == MANIFEST_VERSION else None


def check_split_file(path: Path, info: dict[str, Any]) -> None:
    """Raise DataNotReady unless `path` has the size and sha256 the manifest records."""
    if not path.exists():
        raise DataNotReady(f"{path} is missing")
    if path.stat().st_size != info["tokens"] * np.dtype(TOKEN_DTYPE).itemsize:
        raise DataNotReady(f"{path} has the wrong size")
    if sha256_file(path) != info["sha256"]:
        raise DataNotReady(f"{path} does not match its sha256 in the manifest")


def verify_tokenizer(out_dir: Path, manifest: dict[str, Any]) -> None:
    info = manifest["tokenizer"]
    if info["kind"] == "bpe" and sha256_file(out_dir / "tokenizer.tiktoken") != info.get("sha256"):
        raise DataNotReady("tokenizer.tiktoken does not match the manifest")


def verify_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Check every split's token file (size and sha256) and the tokenizer file against
    the manifest (what prepare.py does before it reuses a cache)."""
    for info in manifest["splits"].values():
        check_split_file(out_dir / info["path"], info)
    verify_tokenizer(out_dir, manifest)


@functools.cache
def _verified(path: str, tokens: int, sha256: str) -> None:
    """check_split_file, once per process and file (a failure is not cached)."""
    check_split_file(Path(path), {"tokens": tokens, "sha256": sha256})


@dataclass(frozen=True)
class Prepared:
    source: str
    directory: Path
    manifest: dict[str, Any]

    def hint(self) -> str:
        return (
            f"run `python prepare.py` first (cache: {self.directory.parent}, source: {self.source})"
        )

    def split_path(self, split: str) -> Path:
        if split not in self.manifest["splits"]:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return self.directory / self.manifest["splits"][split]["path"]

    def visible(self, split: str) -> bool:
        return self.split_path(split).exists()

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens (a read-only memmap), verified on first use in this process."""
        path, info = self.split_path(split), self.manifest["splits"][split]
        if split in SEALED_SPLITS and not path.exists():
            raise DataNotReady(
                f"the {split} split is sealed: {path} is not visible to the training process; "
                f"autoswarm evaluates the model in a separate process (`python prepare.py evaluate`). "
                f"Outside autoswarm's sandbox, run `python prepare.py`"
            )
        try:
            _verified(str(path), info["tokens"], info["sha256"])
        except DataNotReady as e:
            raise DataNotReady(f"{e}: {self.hint()}") from e
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


@functools.cache
def _load(source: str, cache: str) -> Prepared:
    """The manifest and the tokenizer file, verified; token files are checked on use."""
    out_dir = Path(cache) / source
    manifest = read_manifest(out_dir)
    prepared = Prepared(source, out_dir, manifest or {})
    if manifest is None:
        raise DataNotReady(f"no prepared data in {out_dir}: {prepared.hint()}")
    try:
        verify_tokenizer(out_dir, manifest)
    except DataNotReady as e:
        raise DataNotReady(f"{e}: {prepared.hint()}") from e
    return prepared


def load_prepared(source: str = SOURCE) -> Prepared:
    """The prepared data for `source`, with what training needs verified (manifest,
    tokenizer, train split); raises DataNotReady with a hint if absent."""
    prepared = _load(source, str(cache_root()))
    prepared.tokens("train")
    return prepared


def split_visible(split: str, source: str = SOURCE) -> bool:
    """Whether this process can read `split` ("train", "val" or "test"): False for val
    and test inside the orchestrator's training sandbox, which hides the sealed directory."""
    return _load(source, str(cache_root())).visible(split)


def get_tokenizer(source: str = SOURCE) -> Tokenizer:
    prepared = _load(source, str(cache_root()))
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

    prepared = load_prepared(source)
    tokens = prepared.tokens(split)
    if len(tokens) <= seq_len + 1:
        raise DataNotReady(
            f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    rng = np.random.default_rng([seed, SPLITS.index(split)])
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
#
# train.py (eagerly, on its own model) and the evaluator (on the exported program)
# call the same function, and it calls the model only with inputs of one shape,
# (batch_size, seq_len): an exported program has static shapes, and the same calls
# on both sides give the same float.


def model_device(model: Any) -> Any:
    """The device of the model's first parameter (else buffer; else the CPU)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def bits_per_byte(
    model: Any, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int, batch_size: int
) -> float:
    """bpb of `model` on the targets tokens[1:], read in consecutive windows of seq_len
    targets (each window's input is the seq_len tokens before its targets).

    `model(x)` is called with int64 tensors of shape exactly (batch_size, seq_len) and
    must return logits of shape (batch_size, seq_len, vocab). The last window is padded
    at its end and the last batch with dummy rows; padded targets are not scored. The
    model gets a copy of the inputs only, never the storage that holds the targets.
    The caller sets eval mode and any autocast context."""
    import torch
    import torch.nn.functional as F

    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    device = model_device(model)
    lengths = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    stream = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n_targets = len(stream) - 1
    if n_targets < 1:
        raise ValueError("no targets: the token stream has fewer than 2 tokens")
    n_windows = -(-n_targets // seq_len)
    n_batches = -(-n_windows // batch_size)
    padded = torch.zeros(
        n_batches * batch_size * seq_len + 1, dtype=torch.int64
    )  # pads are token 0
    padded[: len(stream)] = stream
    windows = padded.unfold(0, seq_len + 1, seq_len)  # (n_batches * batch_size, seq_len + 1)
    # Target j of window w is stream[w * seq_len + j + 1]: scored when that exists.
    target_index = torch.arange(batch_size * seq_len).view(batch_size, seq_len)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for b in range(n_batches):
            rows = windows[b * batch_size : (b + 1) * batch_size].to(device)
            real = (target_index + b * batch_size * seq_len < n_targets).to(device)
            x, y = rows[:, :-1].clone(), rows[:, 1:]
            logits = model(x)
            if tuple(logits.shape[:2]) != (batch_size, seq_len) or logits.ndim != 3:
                raise ValueError(
                    f"the model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}"
                )
            logits = logits.float()
            nats = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
            )
            nbytes = torch.where(real.reshape(-1), lengths[y.reshape(-1)], 0)
            total_nats += torch.where(nbytes > 0, nats, 0.0).sum(dtype=torch.float64)
            total_bytes += nbytes.sum()
    if total_bytes.item() == 0:
        raise ValueError("no scorable targets (all special tokens?)")
    return float(total_nats.item() / (math.log(2) * total_bytes.item()))


def evaluate_bpb(
    model: Any, seq_len: int, batch_size: int, split: str = "val", source: str = SOURCE
) -> float:
    """Bits per byte on the first EVAL_TOKENS targets of `split` ("val" or "test").

    The targets are the same whatever seq_len is; seq_len only sets how much
    context the model gets (rows are consecutive, not overlapping)."""
    tokens = _load(source, str(cache_root())).tokens(split)[: EVAL_TOKENS[source] + 1]
    return bits_per_byte(model, tokens, get_tokenizer(source).token_bytes(), seq_len, batch_size)


# ---------------------------------------------------------------------------
# Handing the model over: train.py exports, the evaluator loads
#
# train.py is written by whoever runs the experiment, so it cannot be trusted to
# compute its own score. It saves its trained model as a torch.export program (a
# graph of ATen operators plus weights: no Python code of train.py survives), and
# the evaluator, a separate process that sees the sealed splits, scores that
# program with the functions above.

MODEL_FORMAT = 1
MODEL_META = "autoswarm.json"  # extra file in the archive: format, seq_len, batch_size


def export_model(model: Any, path: str | os.PathLike[str], seq_len: int, batch_size: int) -> None:
    """Save `model` (in eval mode) for the evaluator: a static-shape torch.export
    program taking (batch_size, seq_len) int64 tokens, written atomically to `path`.

    Call it in the autocast context the model is evaluated in: an active autocast
    is made part of the program (casts in the graph), so the evaluator, which runs
    the program without autocast, computes what train.py computes. In-place
    operations are rewritten to out-of-place ones (the evaluator refuses graphs
    that write into tensors). Raises ExportError when torch.export fails."""
    import torch

    device = model_device(model)
    module = model
    if torch.is_autocast_enabled(device.type):
        module = _autocast_module(model, device.type, torch.get_autocast_dtype(device.type))
    example = torch.zeros((batch_size, seq_len), dtype=torch.int64, device=device)
    try:
        # Ambient autocast is invisible to export (it would leave dtype asserts that
        # fail without it); the wrapper re-enters it inside forward, where it is traced.
        with torch.autocast(device.type, enabled=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
            program = torch.export.export(module, (example,), strict=False)
            if _needs_functionalization(program):
                program = program.run_decompositions({})
    except Exception as e:
        raise ExportError(
            f"torch.export could not capture the model for input shape ({batch_size}, {seq_len}): "
            f"{type(e).__name__}: {one_line(str(e))}"
        ) from e
    meta = {
        "format": MODEL_FORMAT,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "torch": torch.__version__,
    }
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")  # torch wants the .pt2 suffix
    try:
        torch.export.save(program, tmp, extra_files={MODEL_META: json.dumps(meta)})
        os.replace(tmp, path)
    except Exception as e:
        raise ExportError(
            f"could not write the model to {path}: {type(e).__name__}: {one_line(str(e))}"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def _autocast_module(model: Any, device_type: str, dtype: Any) -> Any:
    import torch

    class Autocast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype):
                return self.model(idx)

    return Autocast()


def _needs_functionalization(program: Any) -> bool:
    """Autocast regions (a higher-order op and its submodule) and in-place ops are
    rewritten by run_decompositions({}); a plain graph is saved as traced (cheaper)."""
    import torch

    for node in program.graph.nodes:
        if node.op == "get_attr" or isinstance(node.target, torch._ops.HigherOrderOperator):
            return True
        if node.op == "call_function" and getattr(
            getattr(node.target, "_schema", None), "is_mutable", False
        ):
            return True
    return False


# ---------------------------------------------------------------------------
# The locked evaluator: `python prepare.py evaluate`
#
# What it trusts: nothing in the archive. Before torch parses anything, the archive
# is read with zipfile/json and must look exactly like what export_model writes: no
# pickled weights or objects, no compiled (AOTInductor) libraries, no guard code or
# symbolic expressions (torch exec()s the one and sympify()s the other), and only
# ATen/prims operators as call targets. torch.export.load then runs with
# TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (its one remaining pickle, the example inputs, is
# read by the restricted unpickler). The loaded graph is checked again, op by op,
# with a rule read off each operator's schema (op_refusal), then for causality on
# real val windows. Only then is it scored, on val and test.

# String arguments that only select a numeric variant of an op. Any other string
# argument (a file name, a message, a process-group name) refuses the op.
STR_ARGS_ALLOWED = frozenset(
    {
        "approximate",  # gelu
        "assert_msg",  # _assert_scalar / _assert_async: raise, nothing else
        "driver",  # linalg svd/lstsq
        "equation",  # einsum
        "indexing",  # meshgrid
        "interpolation",  # quantile
        "mode",  # pad, interpolate, linalg_qr
        "norm",  # fft
        "ord",  # linalg norms
        "pad_mode",  # stft
        "padding",  # conv "same" / "valid"
        "padding_side",  # pad_sequence
        "reduce",  # scatter_reduce, index_reduce
        "rounding_mode",  # div
        "side",  # searchsorted
    }
)
# Ops that hand out uninitialized memory: it may still hold what the evaluator
# freed before (token windows), so a graph must not read it.
UNINITIALIZED_OPS = frozenset(
    {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}
)
# Python builtins an exported graph may call: getitem on multi-output ops, and the
# arithmetic of symbolic shapes.
BUILTIN_TARGETS = {
    f"_operator.{name}": getattr(operator, name)
    for name in (
        "getitem",
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "mod",
        "neg",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
    )
}
OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
# The files torch.export.save writes for one program (torch 2.13), relative to the archive's root folder.
ARCHIVE_ENTRY = re.compile(
    r"models/model\.json|extra/autoswarm\.json|data/sample_inputs/model\.pt"
    r"|data/weights/(model_weights_config\.json|weight_\d+)|data/constants/(model_constants_config\.json|tensor_\d+)"
    r"|archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
)
CAUSAL_CUTS = 6  # cut points per check: 0 (a whole row replaced), 1, ..., seq_len - 1
CAUSAL_ATOL = 1e-3  # nats: float noise of an honest model is orders of magnitude below


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_model_archive(path: Path) -> dict[str, Any]:
    """Check the archive with zipfile and json only; return its autoswarm.json."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise EvaluationError(f"{path} is not a model archive written by export_model: {e}") from e
    with archive:
        names = archive.namelist()
        if len(set(names)) != len(names):  # zipfile reads the last copy, torch's reader maybe not
            raise EvaluationError("refusing the model: the archive holds an entry twice")
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names):
            raise EvaluationError(
                f"{path} is not a model archive written by export_model (no single root folder)"
            )
        root = roots.pop()
        entries = {name.split("/", 1)[1] for name in names}
        for entry in sorted(entries):
            if not ARCHIVE_ENTRY.fullmatch(entry):
                raise EvaluationError(
                    f"refusing the model: unexpected entry {entry!r} in the archive"
                )

        def read_json(entry: str) -> dict[str, Any]:
            if entry not in entries:
                raise EvaluationError(f"refusing the model: the archive has no {entry}")
            try:
                loaded = json.loads(archive.read(f"{root}/{entry}"))
            except ValueError as e:
                raise EvaluationError(f"refusing the model: {entry} is not JSON: {e}") from e
            if not isinstance(loaded, dict):
                raise EvaluationError(f"refusing the model: {entry} is not a JSON object")
            return loaded

        meta = read_json("extra/autoswarm.json")
        for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            config = read_json(f"data/{kind}/model_{kind}_config.json").get("config", {})
            for name, payload in config.items():
                if payload.get("use_pickle") is not False or not re.fullmatch(
                    rf"{prefix}\d+", str(payload.get("path_name"))
                ):
                    raise EvaluationError(
                        f"refusing the model: {kind} entry {name!r} is not a plain tensor"
                    )
        program = read_json("models/model.json")
    if program.get("guards_code"):
        raise EvaluationError("refusing the model: the program carries guard code")
    if program.get("range_constraints"):
        raise EvaluationError("refusing the model: the program has symbolic (dynamic) shapes")
    graph = program.get("graph_module", {}).get("graph", {})
    if graph.get("custom_obj_values"):
        raise EvaluationError("refusing the model: the program holds custom objects")
    text = json.dumps(program)
    for key in ("expr_str", "as_graph", "as_custom_obj", "as_operator"):
        if f'"{key}"' in text:
            raise EvaluationError(
                f"refusing the model: the program uses {key} (only plain static graphs are accepted)"
            )
    for node in graph.get("nodes", []):
        target = str(node.get("target"))
        if not OP_TARGET.fullmatch(target) and target not in BUILTIN_TARGETS:
            raise EvaluationError(
                f"refusing the model: its graph calls {target}, which is not an ATen or prims operator"
            )
    if meta.get("format") != MODEL_FORMAT:
        raise EvaluationError(f"refusing the model: {MODEL_META} is not format {MODEL_FORMAT}")
    for key in ("seq_len", "batch_size"):
        if not isinstance(meta.get(key), int) or not 1 <= meta[key] <= 1 << 22:
            raise EvaluationError(f"refusing the model: {MODEL_META} has no valid {key}")
    if meta["seq_len"] * meta["batch_size"] > 1 << 24:
        raise EvaluationError(
            "refusing the model: batch_size x seq_len is over 2^24 tokens per call"
        )
    return meta


def op_refusal(target: Any) -> str | None:
    """Why the evaluator refuses a graph calling `target`, or None when it may run.

    Derived from the op's schema, not from a list of names: an op is refused when it
    is not an ATen/prims operator, writes into a tensor, draws random numbers, hands
    out uninitialized memory, or takes a string (a file name, a message: a way out of
    the graph), a storage, a generator or a stream."""
    import torch

    if any(target is builtin for builtin in BUILTIN_TARGETS.values()):
        return None
    if not isinstance(target, torch._ops.OpOverload) or target.namespace not in ("aten", "prims"):
        return "which is not an ATen or prims operator"
    schema = target._schema
    if schema.name.split("::")[-1] in UNINITIALIZED_OPS:
        return "which returns uninitialized memory"
    if schema.is_mutable:
        return "which writes into a tensor"
    for argument in schema.arguments:
        kind = str(argument.type)
        if re.search(r"\bstr\b", kind) and argument.name not in STR_ARGS_ALLOWED:
            return f"whose argument {argument.name!r} is a string"
        if re.search(r"\b(Storage|Generator|Stream|Any)\b", kind) or "__torch__" in kind:
            return f"whose argument {argument.name!r} has type {kind}"
    return None


def node_refusal(node: Any) -> str | None:
    """op_refusal, plus randomness: an op tagged nondeterministic_seeded runs only with
    its randomness switched off in this call (dropout_p == 0, train == False), as
    scaled_dot_product_attention is in every eval-mode model."""
    import torch

    refusal = op_refusal(node.target)
    if refusal or not isinstance(node.target, torch._ops.OpOverload):
        return refusal
    if torch.Tag.nondeterministic_seeded not in node.target.tags:
        return None
    switches = {"dropout_p": 0.0, "train": False}
    arguments = node.target._schema.arguments
    values = {
        a.name: node.args[i] if i < len(node.args) else node.kwargs.get(a.name, a.default_value)
        for i, a in enumerate(arguments)
    }
    if any(name in values for name in switches) and all(
        values[name] == off for name, off in switches.items() if name in values
    ):
        return None
    return "which draws random numbers"


def check_program(program: Any, meta: dict[str, Any]) -> None:
    """Refuse (EvaluationError) a loaded program that is not a pure function of one
    (batch_size, seq_len) int64 input built from allowed ops."""
    import torch

    signature = program.graph_signature
    for what in (
        "buffers_to_mutate",
        "parameters_to_mutate",
        "user_inputs_to_mutate",
        "input_tokens",
        "output_tokens",
    ):
        if getattr(signature, what, None):
            raise EvaluationError(f"refusing the model: the program has side effects ({what})")
    if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
        raise EvaluationError(
            "refusing the model: the program must take one input (tokens) and return one output"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in signature.user_inputs:
            value = node.meta.get("val")
            shape = (meta["batch_size"], meta["seq_len"])
            if value is None or tuple(value.shape) != shape or value.dtype != torch.int64:
                raise EvaluationError(
                    f"refusing the model: its input is not an int64 tensor of shape {shape}"
                )
        elif node.op == "call_function":
            refusal = node_refusal(node)
            if refusal:
                raise EvaluationError(
                    f"refusing the model: its graph calls {node.target}, {refusal}"
                )
        elif node.op not in ("placeholder", "output"):
            raise EvaluationError(
                f"refusing the model: its graph has a {node.op} node ({node.target})"
            )


@contextlib.contextmanager
def _restricted_unpickling() -> Iterator[None]:
    """torch.load with weights_only=True everywhere, even where torch asks for False."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_model(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The exported program at `path` as a callable module, and its autoswarm.json,
    after every check above but the causality check; raises EvaluationError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"no model at {path}: train.py writes it when AUTOSWARM_MODEL is set")
    meta = read_model_archive(path)
    try:
        with _restricted_unpickling():
            program = torch.export.load(path)
    except Exception as e:
        raise EvaluationError(
            f"could not load {path}: {type(e).__name__}: {one_line(str(e))}"
        ) from e
    check_program(program, meta)
    return program.module(), meta


def check_causal(model: Any, tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    """Refuse a model whose predictions depend on the tokens they predict.

    Rows are real val windows. Row i is cut at c_i (cycling through 0, 1, a few
    middle points and seq_len - 1); its tokens at positions >= c_i are replaced by
    those of another window. The log-probabilities at positions < c_i must not move:
    a causal model's prediction at position t depends only on tokens 0..t of its own
    row. A cut at 0 replaces a whole row, which catches models that read other rows."""
    import torch

    if seq_len < 2:
        return  # one input token per row: nothing ahead of it to see
    stream = np.asarray(tokens, dtype=np.int64)
    stream = np.resize(stream, max(len(stream), 2 * seq_len + 1))
    span = len(stream) - seq_len
    cuts = sorted(
        {0, 1, *(seq_len * k // (CAUSAL_CUTS - 2) for k in range(1, CAUSAL_CUTS - 2)), seq_len - 1}
    )
    device = model_device(model)
    n_rows = max(batch_size, len(cuts))  # every cut is tried, in as many calls as needed
    for first in range(0, n_rows, batch_size):
        rows = np.arange(first, first + batch_size)
        starts = rows * seq_len % span
        donors = (starts + span // 2) % span
        x = np.stack([stream[s : s + seq_len] for s in starts])
        other = np.stack([stream[s : s + seq_len] for s in donors])
        row_cuts = np.array([cuts[r % len(cuts)] for r in rows])
        mixed = np.where(np.arange(seq_len)[None, :] >= row_cuts[:, None], other, x)
        with torch.no_grad():
            a = torch.log_softmax(model(torch.from_numpy(x).to(device)).float(), dim=-1)
            b = torch.log_softmax(model(torch.from_numpy(mixed).to(device)).float(), dim=-1)
        for i, cut in enumerate(row_cuts.tolist()):
            if cut == 0:
                continue
            change = (a[i, :cut] - b[i, :cut]).abs().max().item()
            if not change <= CAUSAL_ATOL:  # also catches NaN
                raise EvaluationError(
                    f"refusing the model: the model sees the tokens it predicts (its log-probabilities at "
                    f"positions < {cut} changed by {change:.3g} when only later tokens changed)"
                )


def evaluate_model_file(path: str | os.PathLike[str], source: str = SOURCE) -> dict[str, float]:
    """Load, check and score the model at `path`: {"val_bpb", "test_bpb", "eval_seconds"}."""
    started = time.time()
    model, meta = load_model(path)
    seq_len, batch_size = meta["seq_len"], meta["batch_size"]
    prepared = _load(source, str(cache_root()))
    vocab = get_tokenizer(source).vocab_size
    val = prepared.tokens("val")[: EVAL_TOKENS[source] + 1]
    import torch

    with torch.no_grad():
        logits = model(
            torch.zeros((batch_size, seq_len), dtype=torch.int64, device=model_device(model))
        )
    if tuple(logits.shape) != (batch_size, seq_len, vocab) or not logits.dtype.is_floating_point:
        raise EvaluationError(
            f"refusing the model: it returns {logits.dtype} {tuple(logits.shape)}, "
            f"expected floating-point logits of shape {(batch_size, seq_len, vocab)}"
        )
    check_causal(model, val, seq_len, batch_size)
    scores = {
        split: evaluate_bpb(model, seq_len, batch_size, split, source) for split in SEALED_SPLITS
    }
    for split, value in scores.items():
        if not math.isfinite(value):
            raise EvaluationError(f"the model's {split}_bpb is {value}")
    return {
        "val_bpb": scores["val"],
        "test_bpb": scores["test"],
        "eval_seconds": time.time() - started,
    }


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit 2
        raise EvaluationError(message)


def evaluate_main(argv: list[str]) -> int:
    """`python prepare.py evaluate [--model PATH]`: the summary block on stdout, exit 0;
    on any failure one line `prepare.py: error: ...` on stderr, exit 1."""
    # The evaluator's stderr is its verdict: keep torch's warnings and logs out of it.
    with warnings.catch_warnings(), _logging_disabled():
        warnings.simplefilter("ignore")
        return _evaluate_command(argv)


@contextlib.contextmanager
def _logging_disabled() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _evaluate_command(argv: list[str]) -> int:
    try:
        parser = _OneLineParser(
            prog="prepare.py evaluate", description="Score an exported model on val and test."
        )
        parser.add_argument(
            "--model",
            default=None,
            help="default: $AUTOSWARM_MODEL, else $AUTOSWARM_RUN_DIR/model.pt2",
        )
        args = parser.parse_args(argv)
        path = args.model or os.environ.get("AUTOSWARM_MODEL")
        if not path and os.environ.get("AUTOSWARM_RUN_DIR"):
            path = str(Path(os.environ["AUTOSWARM_RUN_DIR"]) / "model.pt2")
        if not path:
            raise EvaluationError(
                "no model given: pass --model PATH or set AUTOSWARM_MODEL (or AUTOSWARM_RUN_DIR)"
            )
        import torch

        if os.environ.get("AUTOSWARM_THREADS"):
            torch.set_num_threads(int(os.environ["AUTOSWARM_THREADS"]))
        result = evaluate_model_file(path)
    except Exception as e:
        message = (
            str(e) if isinstance(e, EvaluationError | DataNotReady) else f"{type(e).__name__}: {e}"
        )
        print(f"prepare.py: error: {one_line(message)}", file=sys.stderr)
        return 1
    print("---")
    print(f"val_bpb:          {result['val_bpb']:.6f}")
    print(f"test_bpb:         {result['test_bpb']:.6f}")
    print(f"eval_seconds:     {result['eval_seconds']:.1f}")
    return 0


# ---------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:
        return evaluate_main(argv[1:])
    parser = argparse.ArgumentParser(
        description="Prepare data and tokenizer for autoswarm's train.py (or: prepare.py evaluate --help)."
    )
    parser.add_argument("--source", choices=["stdlib", "climbmix"], default=SOURCE)
    parser.add_argument(
        "--cache-dir", default=None, help="default: $AUTOSWARM_CACHE or ~/.cache/autoswarm"
    )
    parser.add_argument(
        "--num-shards", type=int, default=DEFAULT_NUM_SHARDS, help="climbmix training shards"
    )
    parser.add_argument(
        "--base-url", default=BASE_URL, help="climbmix shard server (a mirror, or a test server)"
    )
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
        f"val {splits['val']['tokens']:,} tokens, test {splits['test']['tokens']:,} tokens, "
        f"vocab {manifest['tokenizer']['vocab_size']}, unigram baseline {manifest['unigram_bpb']:.4f} bpb"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
