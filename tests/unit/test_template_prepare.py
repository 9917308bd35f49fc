"""Unit tests for the workspace template's prepare.py (autoswarm/templates/prepare.py).

Fast: a fake standard library of a few dozen files, and climbmix shards served from a
loopback HTTP server (no internet). Every test uses its own tmp cache directory, except
the evaluator's tests, which share one (prepared once for the module). The evaluator is
run in-process where that tests the same code, and as a real `python prepare.py
evaluate` process twice (a model it scores, a model it refuses).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

from climbmix_server import ShardServer, sample_texts, write_shard  # noqa: E402


def load_prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "template_prepare", REPO / "autoswarm/templates/prepare.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


prepare = load_prepare()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("AUTOSWARM_CACHE", str(directory))
    return directory


@pytest.fixture
def fake_stdlib(tmp_path: Path) -> Path:
    """40 modules, plus files that must be skipped (tests, site-packages, non-UTF-8)."""
    root = tmp_path / "lib"
    for i in range(40):
        package = root / f"pkg{i % 4}"
        package.mkdir(parents=True, exist_ok=True)
        body = f'"""Module {i}."""\n\n\ndef function_{i}(x):\n    return x * {i} + {i % 7}\n' * (
            20 + i
        )
        (package / f"mod{i}.py").write_text(body)
    for skipped in ("test/test_x.py", "site-packages/thirdparty.py", "pkg0/tests/test_y.py"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("SKIPPED = True\n")
    (root / "latin1.py").write_bytes(b"# caf\xe9\n")
    return root


# ---------------------------------------------------------------------------
# stdlib source: split, manifest, idempotency


def test_split_is_deterministic_by_file(fake_stdlib: Path) -> None:
    first = prepare.read_stdlib(fake_stdlib)
    second = prepare.read_stdlib(fake_stdlib)
    assert first == second
    names = {split: {rel for rel, _ in docs} for split, docs in first.items()}
    assert set(names) == {"train", "val", "test"}
    train, val, test = names["train"], names["val"], names["test"]
    assert val and test and not (train & val or train & test or val & test)
    assert len(train | val | test) == 40  # skipped dirs and the non-UTF-8 file are out
    assert all(prepare.is_val_file(rel) and not prepare.is_test_file(rel) for rel in val)
    assert all(prepare.is_test_file(rel) and not prepare.is_val_file(rel) for rel in test)
    assert all(prepare.stdlib_split(rel) == "train" for rel in train)
    # The split depends only on the relative path (a stable hash), not on the process.
    assert prepare.stdlib_split("pkg0/mod0.py") == prepare.stdlib_split("pkg0/mod0.py")
    assert [rel for rel, _ in first["train"]] == sorted(train)


def test_split_of_the_real_stdlib_is_three_way() -> None:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    rels = [p.relative_to(root).as_posix() for p in prepare.stdlib_files(root)]
    assert len(rels) > 300
    share = {s: sum(prepare.stdlib_split(r) == s for r in rels) / len(rels) for s in prepare.SPLITS}
    assert 0.05 < share["val"] < 0.15 and 0.05 < share["test"] < 0.15  # test about val's size
    assert not any("/test/" in f"/{rel}" or rel.startswith("site-packages") for rel in rels)


def test_prepare_stdlib_writes_verified_manifest(cache: Path, fake_stdlib: Path) -> None:
    manifest = prepare.prepare_stdlib(cache, root=fake_stdlib)
    splits = prepare.read_stdlib(fake_stdlib)
    out = cache / "stdlib"
    assert manifest["version"] == prepare.MANIFEST_VERSION == 2
    assert {p.name for p in out.iterdir()} == {
        "manifest.json",
        "tokenizer.json",
        "train.bin",
        "sealed",
    }
    assert {p.name for p in (out / "sealed").iterdir()} == {"val.bin", "test.bin"}
    for name in ("train", "val", "test"):
        info = manifest["splits"][name]
        assert info["path"] == ("train.bin" if name == "train" else f"sealed/{name}.bin")
        assert info["documents"] == len(splits[name])
        source_bytes = sum(len(data) for _, data in splits[name])
        assert manifest["source_info"]["splits"][name]["bytes"] == source_bytes
        assert info["tokens"] == source_bytes + info["documents"]  # one BOS per document
        tokens = np.fromfile(out / info["path"], dtype=np.uint16)
        assert tokens[0] == 256
        assert (tokens == 256).sum() == info["documents"]
    assert 0 < manifest["unigram_bpb"] < 8 and 0 < manifest["unigram_test_bpb"] < 8
    loaded = prepare.load_prepared("stdlib")
    assert loaded.manifest == manifest


def test_old_layout_is_rebuilt_without_unsealed_copies(cache: Path, fake_stdlib: Path) -> None:
    prepare.prepare_stdlib(cache, root=fake_stdlib)
    out = cache / "stdlib"
    old = json.loads((out / "manifest.json").read_text())
    old["version"] = 1  # the layout before sealing: val.bin beside train.bin
    (out / "manifest.json").write_text(json.dumps(old))
    shutil.copy(out / "sealed" / "val.bin", out / "val.bin")
    manifest = prepare.prepare_stdlib(cache, root=fake_stdlib)
    assert manifest["version"] == 2
    assert not (out / "val.bin").exists()  # it would be visible to the training process


def test_prepare_stdlib_is_idempotent(cache: Path, fake_stdlib: Path) -> None:
    first = prepare.prepare_stdlib(cache, root=fake_stdlib)
    train_bin = cache / "stdlib" / "train.bin"
    mtime = train_bin.stat().st_mtime_ns
    second = prepare.prepare_stdlib(cache, root=fake_stdlib)
    assert second == first
    assert train_bin.stat().st_mtime_ns == mtime  # nothing rewritten


def test_corrupt_cache_is_detected_and_rebuilt(cache: Path, fake_stdlib: Path) -> None:
    prepare.prepare_stdlib(cache, root=fake_stdlib)
    train_bin = cache / "stdlib" / "train.bin"
    data = bytearray(train_bin.read_bytes())
    data[10] ^= 0xFF
    train_bin.write_bytes(bytes(data))
    with pytest.raises(prepare.DataNotReady, match="sha256"):
        prepare.verify_manifest(cache / "stdlib", prepare.read_manifest(cache / "stdlib"))
    prepare.prepare_stdlib(cache, root=fake_stdlib)  # rebuilds
    prepare.verify_manifest(cache / "stdlib", prepare.read_manifest(cache / "stdlib"))


def test_missing_data_says_to_run_prepare(cache: Path) -> None:
    with pytest.raises(prepare.DataNotReady, match=r"python prepare\.py"):
        prepare.load_prepared("stdlib")


def hide_sealed(cache: Path, source: str = "stdlib") -> Path:
    """What the orchestrator's sandbox does: an empty directory over <cache>/<source>/sealed."""
    sealed = cache / source / "sealed"
    hidden = sealed.with_name("sealed.hidden")
    sealed.rename(hidden)
    sealed.mkdir()
    return hidden


def test_training_loads_with_the_sealed_dir_empty(cache: Path, fake_stdlib: Path) -> None:
    prepare.prepare_stdlib(cache, root=fake_stdlib)
    hide_sealed(cache)
    assert prepare.load_prepared("stdlib").source == "stdlib"
    x, _ = next(prepare.make_dataloader("train", 2, 16, seed=0, source="stdlib"))
    assert x.shape == (2, 16)
    assert prepare.split_visible("train", "stdlib")
    assert not prepare.split_visible("val", "stdlib") and not prepare.split_visible(
        "test", "stdlib"
    )
    for call in (
        lambda: prepare.load_prepared("stdlib").tokens("val"),
        lambda: prepare.evaluate_bpb(ConstantLogits([0.0] * 257), 16, 2, "test", "stdlib"),
        lambda: next(prepare.make_dataloader("val", 2, 16, seed=0, source="stdlib")),
    ):
        with pytest.raises(
            prepare.DataNotReady, match=r"split is sealed: .* not visible to the training"
        ):
            call()
    # prepare.py run inside the sandbox must not rebuild into the empty directory.
    with pytest.raises(prepare.PrepareError, match="sandbox"):
        prepare.prepare_stdlib(cache, root=fake_stdlib)
    assert not any((cache / "stdlib" / "sealed").iterdir())


def test_sealed_split_is_verified_when_first_read(cache: Path, fake_stdlib: Path) -> None:
    prepare.prepare_stdlib(cache, root=fake_stdlib)
    val_bin = cache / "stdlib" / "sealed" / "val.bin"
    data = bytearray(val_bin.read_bytes())
    data[3] ^= 0xFF
    val_bin.write_bytes(bytes(data))
    prepared = prepare.load_prepared("stdlib")  # training needs train only
    assert len(prepared.tokens("test")) > 0
    with pytest.raises(prepare.DataNotReady, match="sha256"):
        prepared.tokens("val")


# ---------------------------------------------------------------------------
# Tokenizer, dataloader, bits per byte


def test_byte_tokenizer_round_trip() -> None:
    tokenizer = prepare.ByteTokenizer()
    text = "def f(x):\n    return 'héllo ✓ 🐍'\n"
    ids = tokenizer.encode(text)
    assert max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_id, *ids]) == text  # BOS carries no text
    lengths = tokenizer.token_bytes()
    assert lengths[tokenizer.bos_id] == 0 and lengths[:256].tolist() == [1] * 256


class ConstantLogits(torch.nn.Module):
    """A 'model' whose logits are a fixed vector at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*idx.shape, -1)


@pytest.mark.parametrize("seq_len", [1, 3, 4, 100])
def test_bits_per_byte_of_uniform_model(seq_len: int) -> None:
    # Vocabulary of 4: tokens 0..2 are 1, 2 and 3 bytes long, token 3 is BOS (0 bytes).
    token_bytes = np.array([1, 2, 3, 0])
    tokens = np.array([3, 0, 1, 2, 2, 3, 1, 0, 0, 2, 3, 1])
    targets = tokens[1:]
    scored = targets[targets != 3]
    expected = math.log2(4) * len(scored) / token_bytes[scored].sum()
    bpb = prepare.bits_per_byte(
        ConstantLogits([0.0] * 4), tokens, token_bytes, seq_len, batch_size=2
    )
    assert bpb == pytest.approx(expected, rel=1e-6)  # float32 logits


def test_bits_per_byte_of_known_distribution() -> None:
    # Byte vocabulary: a model that always predicts token 0 with p = 1/2 costs 1 bit
    # on each target 0, and -log2(1/(2*255)) on anything else except BOS.
    logits = [math.log(0.5)] + [math.log(0.5 / 255)] * 255 + [-1e9]
    tokens = np.array([256, 0, 0, 5, 0, 256, 0])
    bits = [1, 1, math.log2(510), 1, 0, 1]  # BOS target (index 4) excluded
    expected = sum(bits) / 5
    bpb = prepare.bits_per_byte(
        ConstantLogits(logits), tokens, prepare.ByteTokenizer().token_bytes(), 4, 8
    )
    assert bpb == pytest.approx(expected, rel=1e-6)


class Bigram(torch.nn.Module):
    """A causal model (logits depend on the current token only) that records input shapes."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(
            torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
        )
        self.shapes: set[tuple[int, ...]] = set()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.shapes.add(tuple(idx.shape))
        return self.table[idx]


@pytest.mark.parametrize(("seq_len", "batch_size"), [(1, 1), (3, 2), (7, 4), (50, 3), (200, 2)])
def test_bits_per_byte_calls_one_shape_and_scores_every_target(
    seq_len: int, batch_size: int
) -> None:
    token_bytes = np.array([1, 2, 3, 0])
    tokens = np.random.default_rng(1).integers(0, 4, size=101)
    model = Bigram(4)
    logp = torch.log_softmax(model.table.detach().double(), dim=-1)
    nats = sum(-logp[a, b].item() for a, b in itertools.pairwise(tokens) if b != 3)
    expected = nats / math.log(2) / token_bytes[tokens[1:]].sum()
    bpb = prepare.bits_per_byte(model, tokens, token_bytes, seq_len, batch_size)
    assert bpb == pytest.approx(expected, rel=1e-6)
    assert model.shapes == {(batch_size, seq_len)}  # padded rows and windows, never a ragged call


def test_evaluate_bpb_uses_fixed_val_prefix(
    cache: Path, fake_stdlib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare.prepare_stdlib(cache, root=fake_stdlib)
    monkeypatch.setitem(prepare.EVAL_TOKENS, "stdlib", 1000)
    val = prepare.load_prepared("stdlib").tokens("val")[:1001]
    assert (val[1:] != 256).any()
    expected = math.log2(
        257
    )  # every scored byte-token costs log2(vocab) bits, BOS targets excluded
    model = ConstantLogits([0.0] * 257)
    assert prepare.evaluate_bpb(model, 64, 4) == pytest.approx(expected)
    assert prepare.evaluate_bpb(model, 1000, 1) == pytest.approx(expected)
    assert prepare.evaluate_bpb(model, 64, 4, split="test") == pytest.approx(expected)


def test_dataloader_is_seeded(cache: Path, fake_stdlib: Path) -> None:
    prepare.prepare_stdlib(cache, root=fake_stdlib)
    x, y = next(prepare.make_dataloader("train", 4, 32, seed=1))
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    again, _ = next(prepare.make_dataloader("train", 4, 32, seed=1))
    other, _ = next(prepare.make_dataloader("train", 4, 32, seed=2))
    assert torch.equal(x, again)
    assert not torch.equal(x, other)


# ---------------------------------------------------------------------------
# climbmix source over a loopback server


@pytest.fixture
def shard_files(tmp_path: Path) -> dict[str, bytes]:
    shards = tmp_path / "served"
    shards.mkdir()
    return {
        prepare.shard_name(i): write_shard(shards / prepare.shard_name(i), sample_texts(i))
        for i in (0, 1, prepare.TEST_SHARD, prepare.VAL_SHARD)
    }


def run_climbmix(cache: Path, server: ShardServer, **kwargs: object) -> dict:
    options = {
        "num_shards": 2,
        "base_url": server.base_url,
        "vocab_size": 300,
        "retries": 3,
        "backoff_s": 0.01,
    }
    options.update(kwargs)
    return prepare.prepare_climbmix(cache, **options)


def test_climbmix_download_tokenize_and_idempotent(
    cache: Path, shard_files: dict[str, bytes]
) -> None:
    with ShardServer(shard_files) as server:
        manifest = run_climbmix(cache, server)
        assert sum(server.requests.values()) == 4
        shards = manifest["source_info"]["shards"]
        assert set(shards) == set(shard_files)
        assert all(info["rows"] == 30 for info in shards.values())
        assert manifest["tokenizer"]["vocab_size"] == 300
        assert manifest["splits"]["val"]["documents"] == 30
        assert manifest["splits"]["test"]["documents"] == 30
        assert manifest["splits"]["train"]["documents"] == 60
        out = cache / "climbmix"
        assert {p.name for p in out.iterdir()} == {
            "manifest.json", "tokenizer.tiktoken", "train.bin", "sealed"
        }  # fmt: skip
        assert {p.name for p in (out / "sealed").iterdir()} == {"val.bin", "test.bin", "shards"}
        assert {p.name for p in (out / "sealed" / "shards").iterdir()} == {
            *shard_files,
            "shards.json",
        }

        tokenizer = prepare.get_tokenizer("climbmix")
        text = sample_texts(5)[0]
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.token_bytes()[tokenizer.bos_id] == 0

        again = run_climbmix(cache, server)  # verified no-op: nothing downloaded
        assert again == manifest
        assert sum(server.requests.values()) == 4


def test_climbmix_shard_bounds() -> None:
    assert prepare.TEST_SHARD == prepare.VAL_SHARD - 1
    assert prepare.shard_indices(2) == [0, 1, prepare.TEST_SHARD, prepare.VAL_SHARD]
    assert prepare.shard_indices(prepare.TEST_SHARD - 1)[-3:] == [
        prepare.TEST_SHARD - 2, prepare.TEST_SHARD, prepare.VAL_SHARD
    ]  # fmt: skip
    with pytest.raises(prepare.PrepareError, match="num-shards"):
        prepare.shard_indices(prepare.TEST_SHARD)  # train shards would include the test shard


def test_climbmix_old_shards_dir_is_moved_not_downloaded(
    cache: Path, shard_files: dict[str, bytes]
) -> None:
    with ShardServer(shard_files) as server:
        run_climbmix(cache, server)
        out = cache / "climbmix"
        # Back to the version-1 layout: raw shards beside the manifest, manifest v1.
        (out / "sealed" / "shards").rename(out / "shards")
        old = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps({**old, "version": 1}))
        manifest = run_climbmix(cache, server)
        assert sum(server.requests.values()) == 4  # nothing downloaded again
        assert manifest["version"] == 2
        assert not (out / "shards").exists()
        assert (out / "sealed" / "shards" / prepare.shard_name(prepare.VAL_SHARD)).exists()
        # Both directories (an old checkout ran since): merged, the old one removed.
        (out / "shards").mkdir()
        moved = out / "sealed" / "shards" / "shard_00001.parquet"
        moved.rename(out / "shards" / moved.name)
        prepare.migrate_shards(out)
        assert moved.exists() and not (out / "shards").exists()
        run_climbmix(cache, server)
        assert sum(server.requests.values()) == 4


def test_climbmix_retries_transient_failures(cache: Path, shard_files: dict[str, bytes]) -> None:
    with ShardServer(shard_files) as server:
        server.fail_next["shard_00001.parquet"] = 2
        run_climbmix(cache, server)
        assert server.requests["shard_00001.parquet"] == 3


def test_climbmix_corrupt_shard_fails_cleanly(
    cache: Path,
    shard_files: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prepare, "DOWNLOAD_BACKOFF_S", 0.01)
    good = shard_files["shard_00001.parquet"]
    shard_files["shard_00001.parquet"] = (
        good[: len(good) // 2] + b"garbage" + good[-4:]
    )  # magic intact
    with ShardServer(shard_files) as server:
        with pytest.raises(prepare.PrepareError, match="shard_00001"):
            run_climbmix(cache, server)
        assert server.requests["shard_00001.parquet"] == 3  # retried: corruption may be transient
        shards_dir = cache / "climbmix" / "sealed" / "shards"
        assert not (shards_dir / "shard_00001.parquet").exists()
        assert not list(shards_dir.glob("*.tmp"))
        # Through the CLI: a one-line error and a non-zero exit.
        assert prepare.main(["--source", "climbmix", "--cache-dir", str(cache), "--num-shards", "2",
                             "--base-url", server.base_url]) == 1  # fmt: skip
    assert "prepare.py: error:" in capsys.readouterr().err


def test_climbmix_missing_shard_is_not_retried(cache: Path, shard_files: dict[str, bytes]) -> None:
    del shard_files["shard_00001.parquet"]
    with ShardServer(shard_files) as server:
        with pytest.raises(prepare.PrepareError, match="404"):
            run_climbmix(cache, server)
        assert server.requests["shard_00001.parquet"] == 1


def test_climbmix_redownloads_tampered_shard(cache: Path, shard_files: dict[str, bytes]) -> None:
    with ShardServer(shard_files) as server:
        run_climbmix(cache, server)
        shard = cache / "climbmix" / "sealed" / "shards" / "shard_00000.parquet"
        shard.write_bytes(shard.read_bytes()[:-1] + b"X")
        run_climbmix(cache, server)
        assert server.requests["shard_00000.parquet"] == 2
        assert shard.read_bytes() == shard_files["shard_00000.parquet"]


# ---------------------------------------------------------------------------
# Handing the model over: export_model and `prepare.py evaluate`

SEQ, BATCH = 32, 4


class TinyLM(torch.nn.Module):
    """A small causal model: each position sees the running mean of the embeddings up to it.

    `lookahead` makes it average over the whole row (it sees the tokens it predicts);
    `mix_rows` adds the next row's embeddings (it sees other windows: the next row
    starts with this row's last target)."""

    def __init__(
        self, *, lookahead: bool = False, mix_rows: bool = False, inplace: bool = False
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(257, 16, generator=generator))
        self.head = torch.nn.Parameter(torch.randn(16, 257, generator=generator) * 0.3)
        self.lookahead, self.mix_rows, self.inplace = lookahead, mix_rows, inplace

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed[idx]
        if self.lookahead:
            h = h + h.mean(dim=1, keepdim=True)
        else:
            steps = torch.arange(1, idx.size(1) + 1, dtype=h.dtype, device=h.device)
            h = h.cumsum(dim=1) / steps[None, :, None]
        if self.mix_rows:
            h = h + h.roll(-1, dims=0)
        if self.inplace:
            h.mul_(2.0)
        return torch.tanh(h) @ self.head


class ReadsFile(TinyLM):
    """The attack: the graph reads a file (here the sealed val split) when it runs."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.size = str(path), path.stat().st_size // 2

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.path, size=self.size, dtype=torch.int16)
        return super().forward(idx) + 0 * stolen.float().sum()


class DrawsNoise(TinyLM):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits + 1e-3 * torch.rand_like(logits)


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A prepared fake stdlib shared by the evaluator tests; AUTOSWARM_CACHE points to it."""
    root = tmp_path_factory.mktemp("evallib")
    for i in range(60):
        (root / f"m{i}.py").write_text(
            f"def f{i}(x):\n    return x * {i} + {i % 7}  # line\n" * (10 + i)
        )
    cache = tmp_path_factory.mktemp("evalcache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOSWARM_CACHE", str(cache))
        prepare.prepare_stdlib(cache, root=root)
        yield cache


def export(model: torch.nn.Module, path: Path) -> Path:
    prepare.export_model(model.eval(), path, SEQ, BATCH)
    return path


def evaluate_process(model: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AUTOSWARM_CACHE": str(cache),
        "AUTOSWARM_THREADS": "1",
    }
    command = [
        sys.executable,
        str(REPO / "autoswarm/templates/prepare.py"),
        "evaluate",
        "--model",
        str(model),
    ]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def refusal(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `prepare.py evaluate` in-process; assert exit 1, one stderr line; return it."""
    capsys.readouterr()
    assert prepare.main(["evaluate", *args]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("prepare.py: error: "), err
    return err


def test_export_then_evaluate_matches_eager_bitwise(eval_cache: Path, tmp_path: Path) -> None:
    model = TinyLM().eval()
    path = export(model, tmp_path / "model.pt2")
    eager = {s: prepare.evaluate_bpb(model, SEQ, BATCH, split=s) for s in ("val", "test")}
    result = prepare.evaluate_model_file(path)
    assert (result["val_bpb"], result["test_bpb"]) == (eager["val"], eager["test"])  # bitwise
    assert eager["val"] != eager["test"]

    process = evaluate_process(path, eval_cache)  # what the orchestrator runs
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    lines = process.stdout.splitlines()
    assert lines[:3] == [
        "---",
        f"val_bpb:          {eager['val']:.6f}",
        f"test_bpb:         {eager['test']:.6f}",
    ]
    assert len(lines) == 4 and lines[3].startswith("eval_seconds:     ")


def test_export_bakes_autocast_and_functionalizes_in_place_ops(
    eval_cache: Path, tmp_path: Path
) -> None:
    model = TinyLM(inplace=True).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = prepare.evaluate_bpb(model, SEQ, BATCH)
        path = export(model, tmp_path / "model.pt2")
    loaded, _ = prepare.load_model(path)
    ops = {str(n.target) for n in loaded.graph.nodes if n.op == "call_function"}
    assert "aten._to_copy.default" in ops  # the bf16 casts are in the graph
    assert not any(op.endswith("_.Tensor") for op in ops)  # mul_ became mul
    assert prepare.evaluate_model_file(path)["val_bpb"] == eager  # evaluated without autocast
    assert eager != prepare.evaluate_bpb(model, SEQ, BATCH)  # bf16 does change the number


def test_model_reading_a_file_is_refused(eval_cache: Path, tmp_path: Path) -> None:
    # torch.from_file has no meta kernel, so export cannot trace it; an attacker
    # registers one in train.py's process. The evaluator's process has none, and
    # would happily run the graph.
    library = torch.library.Library("aten", "IMPL")
    library.impl(
        "from_file",
        lambda filename, shared=None, size=0, *, dtype=None, layout=None, device=None, pin_memory=None: (
            torch.empty(size, dtype=dtype, device="meta")
        ),
        "Meta",
    )
    try:
        path = export(
            ReadsFile(eval_cache / "stdlib" / "sealed" / "val.bin"), tmp_path / "model.pt2"
        )
    finally:
        library._destroy()
    process = evaluate_process(path, eval_cache)
    assert process.returncode == 1 and process.stdout == ""
    assert process.stderr.count("\n") == 1, process.stderr
    assert process.stderr.startswith(
        "prepare.py: error: refusing the model: its graph calls aten.from_file"
    )
    assert "'filename' is a string" in process.stderr


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (TinyLM(lookahead=True), "the model sees the tokens it predicts"),
        (TinyLM(mix_rows=True), "the model sees the tokens it predicts"),
        (DrawsNoise(), "draws random numbers"),
    ],
    ids=["lookahead", "mix-rows", "random"],
)
def test_models_that_cheat_are_refused(
    eval_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: TinyLM,
    message: str,
) -> None:
    path = export(model, tmp_path / "model.pt2")
    assert message in refusal(capsys, "--model", str(path))


def test_op_rule_is_read_off_schemas() -> None:
    aten = torch.ops.aten
    allowed = [aten.add.Tensor, aten.div.Tensor_mode, aten.gelu.default, aten.scaled_dot_product_attention.default,
               aten._assert_tensor_metadata.default, aten.rms_norm.default, aten.einsum.default]  # fmt: skip
    assert [prepare.op_refusal(op) for op in allowed] == [None] * len(allowed)
    assert "'filename' is a string" in prepare.op_refusal(aten.from_file.default)
    assert "is a string" in prepare.op_refusal(aten._print.default)
    assert "writes into a tensor" in prepare.op_refusal(aten.add_.Tensor)
    assert "uninitialized" in prepare.op_refusal(aten.empty.memory_format)
    assert "Generator" in prepare.op_refusal(aten.normal.Tensor_float)
    assert "not an ATen" in prepare.op_refusal(print)


def test_archive_is_checked_before_torch_reads_it(
    eval_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    honest = export(TinyLM(), tmp_path / "model.pt2")

    def rewrite(name: str, change: dict[str, bytes]) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(honest) as src, zipfile.ZipFile(out, "w") as dst:
            root = src.namelist()[0].split("/")[0]
            for item in src.namelist():
                rel = item.split("/", 1)[1]
                if rel in change:
                    dst.writestr(item, change.pop(rel))
                else:
                    dst.writestr(item, src.read(item))
            for rel, data in change.items():
                dst.writestr(f"{root}/{rel}", data)
        return out

    with zipfile.ZipFile(honest) as z:
        root = z.namelist()[0].split("/")[0]
        weights = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))
        program = json.loads(z.read(f"{root}/models/model.json"))
    for entry in weights["config"].values():
        entry["use_pickle"] = True
    # torch.export.load(...).module() exec()s guard code: this would create the file.
    pwned = tmp_path / "pwned"
    program["guards_code"] = [f"__import__('os').system('touch {pwned}') == 0"]
    cases = {
        "aoti.pt2": ({"data/aotinductor/model/model.so": b"\x7fELF"}, "unexpected entry"),
        "pickled.pt2": ({"data/weights/model_weights_config.json": json.dumps(weights).encode()}, "not a plain tensor"),
        "guards.pt2": ({"models/model.json": json.dumps(program).encode()}, "guard code"),
    }  # fmt: skip
    for name, (change, message) in cases.items():
        assert message in refusal(capsys, "--model", str(rewrite(name, change)))
    assert not pwned.exists()
    duplicate = rewrite("duplicate.pt2", {})
    with zipfile.ZipFile(duplicate, "a") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        z.writestr(f"{root}/models/model.json", json.dumps(program))
    assert "entry twice" in refusal(capsys, "--model", str(duplicate))
    (tmp_path / "garbage.pt2").write_bytes(b"not a zip")
    assert "not a model archive" in refusal(capsys, "--model", str(tmp_path / "garbage.pt2"))
    assert "no model at" in refusal(capsys, "--model", str(tmp_path / "missing.pt2"))
    monkeypatch.delenv("AUTOSWARM_MODEL", raising=False)
    monkeypatch.delenv("AUTOSWARM_RUN_DIR", raising=False)
    assert "no model given" in refusal(capsys)
    assert "unrecognized arguments" in refusal(capsys, "--modle", "x")
    monkeypatch.setenv("AUTOSWARM_RUN_DIR", str(tmp_path))  # default: <run dir>/model.pt2
    capsys.readouterr()
    assert prepare.main(["evaluate"]) == 0
    assert "val_bpb:" in capsys.readouterr().out
