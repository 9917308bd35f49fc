"""[pool] configuration: the documented examples load, malformed tiers are refused, the factory."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from autoswarm.backends import factory
from autoswarm.backends.factory import make_backend
from autoswarm.backends.local import LocalBackend
from autoswarm.config import Config, PoolConfig, TierConfig, TierRole, load_config
from autoswarm.errors import ConfigError
from autoswarm.tiers import plan_tiers

DOC = Path(__file__).resolve().parents[2] / "docs" / "pools.md"
BASE = """\
[workspace]
editable = ["train.py"]
locked = ["prepare.py"]
"""


def doc_examples() -> list[tuple[str, str]]:
    """(heading, toml) of every ```toml block under '### ' headings of docs/pools.md."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"```toml\n(.*?)```", text, re.S):
        heading = re.findall(r"^### (.+)$", text[: m.start()], re.M)
        out.append((heading[-1] if heading else "?", m.group(1)))
    return out


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "autoswarm.toml").write_text(BASE + body)
    return tmp_path


def test_the_doc_has_the_four_examples() -> None:
    names = [h for h, _ in doc_examples()]
    assert names == [
        "8 local GPUs",
        "A Ray cluster with H100 and H200 nodes",
        "SkyPilot on Kubernetes: 13 H100 + 3 H200",
        "SkyPilot spot instances across clouds",
    ]


@pytest.mark.parametrize("heading,block", doc_examples(), ids=lambda x: str(x)[:24])
def test_every_documented_example_loads(tmp_path: Path, heading: str, block: str) -> None:
    cfg = load_config(write(tmp_path, block))
    raw = tomllib.loads(block)["pool"]
    assert cfg.pool.backend == raw["backend"]
    assert [t.name for t in cfg.pool.tiers] == [t["name"] for t in raw["tiers"]]
    # The scheduler can map the declared slots onto tiers, with at most one validation tier.
    plan = plan_tiers(cfg.pool, sum(t.slots for t in cfg.pool.tiers))
    assert plan.screening
    if cfg.pool.backend == "skypilot":
        try:
            from autoswarm.backends.skytask import parse_pool
        except ImportError:  # pragma: no cover - the SkyPilot task builder is optional here
            return
        parse_pool(cfg.pool)  # the SkyPilot backend accepts its options too


def test_the_seed_setup_is_13_h100_screening_and_3_h200_validating(tmp_path: Path) -> None:
    block = dict(doc_examples())["SkyPilot on Kubernetes: 13 H100 + 3 H200"]
    cfg = load_config(write(tmp_path, block))
    h100, h200 = cfg.pool.tiers
    assert (h100.accelerator, h100.slots, h100.role) == ("H100:1", 13, TierRole.SCREEN)
    assert (h200.accelerator, h200.slots, h200.role) == ("H200:1", 3, TierRole.VALIDATE)
    plan = plan_tiers(cfg.pool, 16)
    assert plan.validation == "h200" and plan.slot_tiers.count("h100") == 13


@pytest.mark.parametrize(
    "tier,message",
    [
        ('name = "a"\nname2 = 1', r"unknown key\(s\) name2"),
        ("slots = 2", r"every tier needs a name"),
        ('name = "a"\nrole = "judge"', r"role must be 'screen', 'validate' or 'any'"),
        ('name = "a"\naccelerator = "H100:x"', r"accelerator 'H100:x' must look like 'H100:1'"),
        ('name = "a"\nslots = 0', r"slots must be >= 1"),
        ('name = "a"\nslots = 4\nmax_slots = 2', r"max_slots \(2\) must be >= slots \(4\)"),
        ('name = "a"\nprice_per_hour = -1', r"price_per_hour must be >= 0"),
        ('name = "a"\nspeed = 0', r"speed must be > 0"),
        ('name = "a"\nslots = "four"', r"slots must be an integer"),
        ('name = "a b"', r"name must be letters, digits"),
        ('name = "a"\noptions = 3', r"options must be a table"),
    ],
)
def test_malformed_tier_is_refused_with_a_clear_error(
    tmp_path: Path, tier: str, message: str
) -> None:
    ws = write(tmp_path, f'[pool]\nbackend = "local"\n\n[[pool.tiers]]\n{tier}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(ws)


def test_pool_level_mistakes_are_refused(tmp_path: Path) -> None:
    two = '[[pool.tiers]]\nname = "a"\n\n[[pool.tiers]]\nname = "a"\n'
    with pytest.raises(ConfigError, match="tier names must be unique"):
        load_config(write(tmp_path, "[pool]\n" + two))
    only_validate = '[[pool.tiers]]\nname = "v"\nrole = "validate"\n'
    with pytest.raises(ConfigError, match="every tier has role 'validate'"):
        load_config(write(tmp_path, "[pool]\n" + only_validate))
    with pytest.raises(ConfigError, match=r"backend 'slurm' is unknown"):
        load_config(write(tmp_path, '[pool]\nbackend = "slurm"\n'))
    with pytest.raises(ConfigError, match=r"must be written as \[\[pool.tiers\]\]"):
        load_config(write(tmp_path, '[pool]\ntiers = "h100"\n'))


def test_tier_plan_errors_say_what_to_change() -> None:
    pool = PoolConfig(
        tiers=(
            TierConfig(name="a", slots=2),
            TierConfig(name="v1", slots=1, role=TierRole.VALIDATE),
            TierConfig(name="v2", slots=1, role=TierRole.VALIDATE),
        )
    )
    with pytest.raises(ConfigError, match="give exactly one tier role 'validate'"):
        plan_tiers(pool, 4)
    with pytest.raises(ConfigError, match=r"reports 7 slot\(s\) but \[\[pool.tiers\]\] declare 4"):
        plan_tiers(pool, 7)
    grow = PoolConfig(tiers=(TierConfig(name="a", slots=1, max_slots=4),))
    assert plan_tiers(grow, 4).slot_tiers == ("a",) * 4  # an autoscaling backend at its max


# ---------------------------------------------------------------------------
# The backend factory


def test_factory_builds_the_local_backend(tmp_path: Path) -> None:
    cfg = Config()
    b = make_backend(cfg, workspace_root=tmp_path, state_dir=tmp_path / ".autoswarm", gpus=[])
    try:
        assert isinstance(b, LocalBackend) and b.capacity() >= 1
    finally:
        b.close()
    tiered = Config(pool=PoolConfig(tiers=(TierConfig(name="gpu", accelerator="X:1", slots=2),)))
    b = make_backend(tiered, workspace_root=tmp_path, state_dir=tmp_path, gpus=["0", "1"])
    try:
        assert b.capacity() == 2  # the tiers decide the local slot count
    finally:
        b.close()


def test_factory_refuses_workers_that_contradict_local_tiers(tmp_path: Path) -> None:
    cfg = Config(pool=PoolConfig(tiers=(TierConfig(name="gpu", slots=2),)))
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"workers": 3})})
    with pytest.raises(ConfigError, match="leave out workers"):
        make_backend(cfg, workspace_root=tmp_path, state_dir=tmp_path, gpus=[])


def test_factory_names_the_extra_when_a_backend_cannot_be_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        factory._REMOTE, "ray", ("autoswarm.backends._not_installed", "RayBackend", "ray")
    )
    cfg = Config(pool=PoolConfig(backend="ray", tiers=(TierConfig(name="h100", slots=1),)))
    with pytest.raises(ConfigError, match=r"pip install 'autoswarm\[ray\]'"):
        make_backend(cfg, workspace_root=tmp_path, state_dir=tmp_path)


def test_factory_hands_remote_backends_the_config_and_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    seen = {}

    class Remote:
        @classmethod
        def from_config(cls, cfg: Config, *, state_dir: Path) -> Remote:
            seen["cfg"], seen["state_dir"] = cfg, state_dir
            return cls()

    mod = types.ModuleType("autoswarm_test_remote")
    mod.Remote = Remote  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "autoswarm_test_remote", mod)
    monkeypatch.setitem(factory._REMOTE, "skypilot", ("autoswarm_test_remote", "Remote", "x"))
    cfg = Config(pool=PoolConfig(backend="skypilot"))
    b = make_backend(cfg, workspace_root=tmp_path, state_dir=tmp_path / "s")
    assert isinstance(b, Remote) and seen == {"cfg": cfg, "state_dir": tmp_path / "s"}


@pytest.mark.parametrize("bad", ["-1", "20", '"low"', "true", "2.5"])
def test_local_nice_option_must_be_0_to_19(tmp_path: Path, bad: str) -> None:
    from autoswarm.backends.factory import local_nice
    from autoswarm.config import load_config

    (tmp_path / "autoswarm.toml").write_text(f"[pool.options]\nnice = {bad}\n")
    cfg = load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"\[pool.options\] nice must be a whole number"):
        local_nice(cfg, tmp_path)


def test_local_nice_option_default_and_set(tmp_path: Path) -> None:
    from autoswarm.backends.factory import local_nice
    from autoswarm.config import load_config

    (tmp_path / "autoswarm.toml").write_text('[pool]\nbackend = "local"\n')
    assert local_nice(load_config(tmp_path), tmp_path) == 10
    (tmp_path / "autoswarm.toml").write_text("[pool.options]\nnice = 0\n")
    assert local_nice(load_config(tmp_path), tmp_path) == 0
