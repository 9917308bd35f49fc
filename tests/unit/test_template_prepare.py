"""Unit tests for the workspace template's prepare.py (autoswarm/templates/prepare.py).

Fast: a fake standard library of a few dozen files, and climbmix shards served from a
loopback HTTP server (no internet). Every test uses its own tmp cache directory.
"""

from __future__ import annotations

import importlib.util
import math
import sys
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
    train = {rel for rel, _ in first["train"]}
    val = {rel for rel, _ in first["val"]}
    assert not train & val
    assert len(train | val) == 40  # skipped dirs and the non-UTF-8 file are out
    assert all(prepare.is_val_file(rel) for rel in val)
    assert not any(prepare.is_val_file(rel) for rel in train)
    # The split depends only on the relative path (a stable hash), not on the process.
    assert prepare.is_val_file("pkg0/mod0.py") == prepare.is_val_file("pkg0/mod0.py")
    assert [rel for rel, _ in first["train"]] == sorted(train)


def test_split_of_the_real_stdlib_is_about_ten_percent() -> None:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    rels = [p.relative_to(root).as_posix() for p in prepare.stdlib_files(root)]
    assert len(rels) > 300
    assert 0.05 < sum(map(prepare.is_val_file, rels)) / len(rels) < 0.15
    assert not any("/test/" in f"/{rel}" or rel.startswith("site-packages") for rel in rels)


def test_prepare_stdlib_writes_verified_manifest(cache: Path, fake_stdlib: Path) -> None:
    manifest = prepare.prepare_stdlib(cache, root=fake_stdlib)
    splits = prepare.read_stdlib(fake_stdlib)
    for name in ("train", "val"):
        info = manifest["splits"][name]
        assert info["documents"] == len(splits[name])
        source_bytes = sum(len(data) for _, data in splits[name])
        assert manifest["source_info"]["splits"][name]["bytes"] == source_bytes
        assert info["tokens"] == source_bytes + info["documents"]  # one BOS per document
        tokens = np.fromfile(cache / "stdlib" / f"{name}.bin", dtype=np.uint16)
        assert tokens[0] == 256
        assert (tokens == 256).sum() == info["documents"]
    assert 0 < manifest["unigram_bpb"] < 8
    loaded = prepare.load_prepared("stdlib")
    assert loaded.manifest == manifest


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
        for i in (0, 1, prepare.VAL_SHARD)
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
        assert sum(server.requests.values()) == 3
        shards = manifest["source_info"]["shards"]
        assert set(shards) == set(shard_files)
        assert all(info["rows"] == 30 for info in shards.values())
        assert manifest["tokenizer"]["vocab_size"] == 300
        assert manifest["splits"]["val"]["documents"] == 30
        assert manifest["splits"]["train"]["documents"] == 60

        tokenizer = prepare.get_tokenizer("climbmix")
        text = sample_texts(5)[0]
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.token_bytes()[tokenizer.bos_id] == 0

        again = run_climbmix(cache, server)  # verified no-op: nothing downloaded
        assert again == manifest
        assert sum(server.requests.values()) == 3


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
        shards_dir = cache / "climbmix" / "shards"
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
        shard = cache / "climbmix" / "shards" / "shard_00000.parquet"
        shard.write_bytes(shard.read_bytes()[:-1] + b"X")
        run_climbmix(cache, server)
        assert server.requests["shard_00000.parquet"] == 2
        assert shard.read_bytes() == shard_files["shard_00000.parquet"]
