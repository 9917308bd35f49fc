"""Pure functions that turn autoswarm config and jobs into SkyPilot task configs (dicts).

Nothing here imports ``sky`` or talks to a cloud: :func:`parse_pool` validates the
``[pool]`` table of a ``backend = "skypilot"`` workspace, :func:`task_config` builds
the task of one experiment (the dict ``sky.Task.from_yaml_config`` accepts, i.e. the
contents of a SkyPilot task YAML), and :func:`plan_tasks` builds the tasks of the
first jobs for ``autoswarm run --dry-run``. The backend (``skypilot.py``) launches
what these functions return; the tests feed every result to SkyPilot's own parser.

The run script wraps the training command in ``timeout`` and ends with two marker
lines (:func:`exit_marker`) because SkyPilot's job status says only SUCCEEDED or
FAILED, while the ledger wants the exact exit code and whether the timeout fired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoswarm.config import Config, PoolConfig, TierConfig
from autoswarm.errors import ConfigError
from autoswarm.sandbox import (
    ALLOWED_NAMES,
    ALLOWED_PREFIXES,
    is_secret_name,
    sandbox_settings,
    secret_name_regex,
)
from autoswarm.types import Evaluation, Job

MODES = ("clusters", "jobs")
RECOVERY_STRATEGIES = ("FAILOVER", "EAGER_NEXT_REGION")
# Exit code of coreutils `timeout` when it had to stop the command.
TIMEOUT_EXIT = 124
_EXIT_RE = re.compile(r"^autoswarm: exit code (-?\d+)\s*$", re.MULTILINE)
_TIMEOUT_RE = re.compile(r"^autoswarm: timed out after ", re.MULTILINE)
_NAME_OK = re.compile(r"[a-z][a-z0-9-]*")

# ---------------------------------------------------------------------------
# Options

# Resource settings allowed both pool-wide ([pool.options]) and per tier ([pool.tiers.options]).
_RESOURCE_KEYS = ("infra", "cloud", "region", "use_spot", "cpus", "memory", "disk_size", "image_id")
_POOL_KEYS = (
    *_RESOURCE_KEYS,
    "mode",
    "cluster_prefix",
    "job_recovery",
    "idle_minutes_to_autostop",
    "setup",
    "python",
    "forward_env",
    "max_relaunches",
    "poll_interval_s",
    "timeout_slack_s",
    "keep_clusters",
)
_TIER_KEYS = (*_RESOURCE_KEYS, "job_recovery")


@dataclass(frozen=True, kw_only=True)
class SkyTier:
    """One tier as SkyPilot sees it: the tier plus its resolved resources."""

    name: str
    accelerator: str
    slots: int
    infra: str = ""  # "k8s", "aws", "aws/us-east-1", "gcp/us-central1" ...
    use_spot: bool = False
    cpus: str = ""  # SkyPilot syntax: "8", "8+"
    memory: str = ""  # GiB, "32+"
    disk_size: int = 0  # GiB; 0 = SkyPilot's default
    image_id: str = ""
    job_recovery: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class SkyOptions:
    """``[pool.options]`` of a SkyPilot pool, validated. See docs/skypilot.md."""

    mode: str = "clusters"
    cluster_prefix: str = "autoswarm"
    idle_minutes_to_autostop: int = 0  # 0 = never (clusters are downed on exit anyway)
    setup: str = ""  # shell run once per cluster before the prepare command
    python: str = "python"  # interpreter on the cluster, replaces the local one in argv
    forward_env: tuple[str, ...] = ()  # extra variables of Job.env passed to the task
    max_relaunches: int = 3  # cluster mode: re-provisions after preemption per experiment
    poll_interval_s: float = 5.0
    timeout_slack_s: float = 60.0  # backend watchdog: timeout + this before it cancels
    keep_clusters: bool = False  # True: close() leaves clusters up (`autoswarm down` later)
    tiers: tuple[SkyTier, ...] = field(default_factory=tuple)
    # [sandbox] as autoswarm.sandbox.sandbox_settings gives it; empty: no sandbox on the node.
    sandbox: Mapping[str, Any] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return sum(t.slots for t in self.tiers)

    def slot_tier(self, slot: int) -> tuple[SkyTier, int]:
        """The tier of global ``slot`` and the slot's index inside that tier."""
        base = 0
        for t in self.tiers:
            if slot < base + t.slots:
                return t, slot - base
            base += t.slots
        raise IndexError(slot)


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg} (see docs/skypilot.md for a complete example)")


def _str(value: Any, where: str, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(where, f"{key} must be a string, got {value!r}")
    return str(value)


def _job_recovery(value: Any, where: str) -> dict[str, Any]:
    """Validate ``job_recovery``: a strategy name or a table of SkyPilot's recovery fields."""
    if isinstance(value, str):
        value = {"strategy": value}
    if not isinstance(value, Mapping):
        raise _fail(
            where,
            "job_recovery must be a table such as "
            '{strategy = "FAILOVER", max_restarts_on_errors = 2}, '
            f"got {value!r}",
        )
    unknown = sorted(set(value) - {"strategy", "max_restarts_on_errors", "recover_on_exit_codes"})
    if unknown:
        raise _fail(
            where,
            f"job_recovery has unknown key(s) {', '.join(unknown)}; known: strategy, "
            "max_restarts_on_errors, recover_on_exit_codes",
        )
    out: dict[str, Any] = {}
    if "strategy" in value:
        s = value["strategy"]
        if not isinstance(s, str) or s.upper() not in RECOVERY_STRATEGIES:
            raise _fail(
                where,
                f"job_recovery strategy {s!r} is unknown; choose {' or '.join(RECOVERY_STRATEGIES)}",
            )
        out["strategy"] = s.upper()
    if "max_restarts_on_errors" in value:
        n = value["max_restarts_on_errors"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise _fail(
                where, f"job_recovery max_restarts_on_errors must be an integer >= 0, got {n!r}"
            )
        out["max_restarts_on_errors"] = n
    if "recover_on_exit_codes" in value:
        codes = value["recover_on_exit_codes"]
        codes = [codes] if isinstance(codes, int) and not isinstance(codes, bool) else codes
        if not isinstance(codes, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in codes
        ):
            raise _fail(where, "job_recovery recover_on_exit_codes must be exit codes 0..255")
        out["recover_on_exit_codes"] = list(codes)
    return out


def _resources(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validated resource settings (a subset of ``_RESOURCE_KEYS`` plus job_recovery)."""
    out: dict[str, Any] = {}
    for key in ("infra", "cloud", "region", "cpus", "memory", "image_id"):
        if key in raw:
            out[key] = _str(raw[key], where, key).strip()
    if "use_spot" in raw:
        if not isinstance(raw["use_spot"], bool):
            raise _fail(where, f"use_spot must be true or false, got {raw['use_spot']!r}")
        out["use_spot"] = raw["use_spot"]
    if "disk_size" in raw:
        d = raw["disk_size"]
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise _fail(where, f"disk_size must be a positive number of GiB, got {d!r}")
        out["disk_size"] = d
    if "job_recovery" in raw:
        out["job_recovery"] = _job_recovery(raw["job_recovery"], where)
    return out


def _infra(res: Mapping[str, Any]) -> str:
    """One SkyPilot ``infra`` string from infra / cloud / region (``aws/us-east-1``)."""
    infra = res.get("infra") or res.get("cloud") or ""
    region = res.get("region", "")
    if region and infra and "/" not in infra:
        infra = f"{infra}/{region}"
    elif region and not infra:
        infra = f"*/{region}"
    return str(infra)


def parse_pool(pool: PoolConfig, *, where: str = "autoswarm.toml [pool]") -> SkyOptions:
    """Validate a SkyPilot pool and resolve each tier's resources.

    Raises:
        ConfigError: an unknown mode or key, a tier without an accelerator, a bad
            ``job_recovery``, ... The message names the field and what to write instead.
    """
    raw = dict(pool.options)
    unknown = sorted(set(raw) - set(_POOL_KEYS))
    if unknown:
        raise _fail(
            f"{where}.options",
            f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(_POOL_KEYS))}",
        )
    mode = raw.get("mode", "clusters")
    if mode not in MODES:
        raise _fail(
            f"{where}.options",
            f"mode {mode!r} is unknown; choose 'clusters' (long-lived clusters reused with "
            "`sky exec`) or 'jobs' (managed jobs with preemption recovery)",
        )
    prefix = _str(raw.get("cluster_prefix", "autoswarm"), f"{where}.options", "cluster_prefix")
    if not _NAME_OK.fullmatch(prefix) or len(prefix) > 24:
        raise _fail(
            f"{where}.options",
            f"cluster_prefix {prefix!r} must be lowercase letters, digits and '-', "
            "start with a letter and be at most 24 characters",
        )
    ints = {}
    for key, default, low in (
        ("idle_minutes_to_autostop", 0, 0),
        ("max_relaunches", 3, 0),
    ):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _fail(f"{where}.options", f"{key} must be an integer >= {low}, got {v!r}")
        ints[key] = v
    floats = {}
    for key, fdefault in (("poll_interval_s", 5.0), ("timeout_slack_s", 60.0)):
        f = raw.get(key, fdefault)
        if isinstance(f, bool) or not isinstance(f, int | float) or f < 0 or not math.isfinite(f):
            raise _fail(f"{where}.options", f"{key} must be a number of seconds >= 0, got {f!r}")
        floats[key] = float(f)
    fwd = raw.get("forward_env", [])
    if not isinstance(fwd, list) or not all(isinstance(x, str) for x in fwd):
        raise _fail(f"{where}.options", "forward_env must be a list of variable names")
    secret = [x for x in fwd if is_secret_name(x)]
    if secret:
        raise _fail(
            f"{where}.options",
            f"forward_env may not pass credential-like variables ({', '.join(secret)}); "
            "give clusters credentials through SkyPilot secrets or the cloud's own identity",
        )
    keep = raw.get("keep_clusters", False)
    if not isinstance(keep, bool):
        raise _fail(f"{where}.options", f"keep_clusters must be true or false, got {keep!r}")
    pool_res = _resources(raw, f"{where}.options")
    if not pool.tiers:
        raise _fail(
            where,
            "a skypilot pool needs at least one [[pool.tiers]] table, e.g. "
            'name = "h100", accelerator = "H100:1", slots = 4',
        )
    tiers = []
    for t in pool.tiers:
        tiers.append(_tier(t, pool_res, mode, f"{where} tier {t.name!r}"))
    return SkyOptions(
        mode=mode,
        cluster_prefix=prefix,
        idle_minutes_to_autostop=ints["idle_minutes_to_autostop"],
        setup=_str(raw.get("setup", ""), f"{where}.options", "setup"),
        python=_str(raw.get("python", "python"), f"{where}.options", "python"),
        forward_env=tuple(fwd),
        max_relaunches=ints["max_relaunches"],
        poll_interval_s=floats["poll_interval_s"],
        timeout_slack_s=floats["timeout_slack_s"],
        keep_clusters=keep,
        tiers=tuple(tiers),
    )


def _tier(t: TierConfig, pool_res: Mapping[str, Any], mode: str, where: str) -> SkyTier:
    if not t.accelerator:
        raise _fail(
            where,
            'a skypilot tier needs an accelerator, e.g. accelerator = "H100:1" '
            "(TYPE:COUNT per slot; `sky show-gpus` lists the types)",
        )
    unknown = sorted(set(t.options) - set(_TIER_KEYS))
    if unknown:
        raise _fail(
            where,
            f"unknown option(s) {', '.join(unknown)}; known tier options: {', '.join(_TIER_KEYS)}",
        )
    slots = t.max_slots or t.slots
    if slots < 1:
        raise _fail(where, "slots must be >= 1 for a skypilot tier")
    res = {**pool_res, **_resources(t.options, where)}
    # Tier-level infra replaces the pool's infra and its region as a whole.
    if any(k in t.options for k in ("infra", "cloud")):
        res = {**res, "region": t.options.get("region", "")}
        if "infra" not in t.options:
            res.pop("infra", None)
        if "cloud" not in t.options:
            res.pop("cloud", None)
    recovery = res.get("job_recovery")
    if recovery is not None and mode != "jobs":
        raise _fail(
            where,
            'job_recovery applies to managed jobs only: set mode = "jobs" in [pool.options] '
            "or remove job_recovery (clusters mode relaunches a preempted cluster itself, "
            "up to max_relaunches)",
        )
    return SkyTier(
        name=t.name,
        accelerator=t.accelerator,
        slots=slots,
        infra=_infra(res),
        use_spot=bool(res.get("use_spot", False)),
        cpus=res.get("cpus", ""),
        memory=res.get("memory", ""),
        disk_size=int(res.get("disk_size", 0)),
        image_id=res.get("image_id", ""),
        job_recovery=recovery,
    )


# ---------------------------------------------------------------------------
# Names


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return s or "x"


def cluster_name(opts: SkyOptions, tag: str, tier: str, index: int) -> str:
    """``<prefix>-<tag>-<tier>-<i>``: one long-lived cluster per slot (clusters mode)."""
    parts = [opts.cluster_prefix, *([_slug(tag)] if tag else []), _slug(tier), str(index)]
    return "-".join(parts)


def job_name(opts: SkyOptions, tag: str, experiment_id: int) -> str:
    """The SkyPilot job / managed-job name of one experiment."""
    parts = [opts.cluster_prefix, *([_slug(tag)] if tag else []), f"e{experiment_id}"]
    return "-".join(parts)


# ---------------------------------------------------------------------------
# Scripts


def exit_marker(exit_code: int, *, timed_out_after: float | None = None) -> str:
    """The lines the run script prints after the training command ends."""
    lines = []
    if timed_out_after is not None:
        lines.append(f"autoswarm: timed out after {timed_out_after:g}s")
    lines.append(f"autoswarm: exit code {exit_code}")
    return "\n".join(lines) + "\n"


def read_exit(log_text: str) -> tuple[int | None, bool]:
    """(exit code, timed out) from a log written by the run script; (None, False) if absent."""
    codes = _EXIT_RE.findall(log_text)
    if not codes:
        return None, False
    return int(codes[-1]), bool(_TIMEOUT_RE.search(log_text))


def remote_argv(argv: Sequence[str], python: str) -> list[str]:
    """``argv`` with this machine's interpreter path replaced by the cluster's ``python``.

    The scheduler substitutes ``{python}`` with the local venv's interpreter, which
    does not exist on a cluster.
    """
    out = list(argv)
    if out and (out[0] == "{python}" or ("/" in out[0] and Path(out[0]).name.startswith("python"))):
        out[0] = python
    return out


def setup_script(opts: SkyOptions, prepare: Sequence[str]) -> str:
    """Runs once per cluster: the user's setup, then the prepare command behind a marker file.

    The marker is keyed by the commands, so a changed prepare step runs again while
    ``sky launch`` on a cluster that is already prepared costs nothing.
    """
    prep = shlex.join(remote_argv(prepare, opts.python)) if prepare else ""
    key = hashlib.sha256(f"{opts.setup}\n{prep}".encode()).hexdigest()[:16]
    lines = ["set -e"]
    if opts.setup.strip():
        lines.append(opts.setup.strip())
    if prep:
        lines += [
            f'marker="$HOME/.autoswarm/prepared-{key}"',
            'if [ ! -f "$marker" ]; then',
            f"  {prep}",
            '  mkdir -p "$HOME/.autoswarm" && touch "$marker"',
            "else",
            '  echo "autoswarm: data already prepared on this cluster ($marker)"',
            "fi",
        ]
    return "\n".join(lines) + "\n"


def sandbox_prelude(settings: Mapping[str, Any], python: str, sealed: Sequence[str] = ()) -> str:
    """Bash that sets ``box``: the command prefix that contains the experiment on the node.

    Also ``evalbox``, the prefix of the locked evaluation (``[metric] evaluate``): the same
    view with ``sealed`` visible (hidden from ``box``), the working directory read-only
    and ``$ev`` (the evaluation's directory, set by the caller) as its own.

    The node's shell builds the same view as :func:`autoswarm.sandbox.experiment_view`
    builds locally: bubblewrap with its own PID, mount, IPC and UTS namespaces (and
    network unless ``network``), no capabilities, the machine read-only, ``$HOME``,
    ``/tmp``, ``/var/tmp``, ``/run`` and ``hide`` empty, the interpreter, the data cache
    and ``read_only`` readable, the task's working directory writable, started by
    ``env -i`` with the allowlisted variables only (so that its init's
    ``/proc/1/environ`` holds no more than the child's). Without a working bubblewrap,
    mode ``auto`` keeps the allowlisted environment and says so; ``bwrap`` refuses
    (exit 126). The first line the experiment's log gets says which.
    """
    mode = settings.get("mode", "off")
    if mode == "off":
        return 'box=()\nevalbox=()\necho "autoswarm: sandbox: off ([sandbox] mode = off)"\n'
    cache = '"${AUTOSWARM_CACHE:-$HOME/.cache/autoswarm}"'
    hidden_data = " ".join(
        shlex.quote(s) if s.startswith("/") else f"{cache}/{shlex.quote(s)}" for s in sealed
    )
    names = sorted({*ALLOWED_NAMES, *settings.get("pass_env", ())})
    allowed = "^(" + "|".join([*names, *(p + ".*" for p in ALLOWED_PREFIXES)]) + ")$"
    # Credential-like names are dropped even when allowlisted, unless passed on purpose.
    passed = "^(" + "|".join(settings.get("pass_env", ()) or ["$"]) + ")$"
    hide = " ".join(shlex.quote(h) for h in settings.get("hide", ()))
    read_only = " ".join(shlex.quote(r) for r in settings.get("read_only", ()))
    limits = [
        f"--{name}={n}:{n}"
        for name, key in (("as", "memory_bytes"), ("nofile", "open_files"), ("nproc", "processes"))
        if (n := int(settings.get(key, 0)))
    ]
    net = "" if settings.get("network") else " --unshare-net"
    refuse = (
        'echo "autoswarm: [sandbox] mode = bwrap but bubblewrap cannot run on $(hostname)"; '
        "exit 126"
    )
    fallback = (
        'echo "autoswarm: sandbox: NONE on $(hostname) (bubblewrap missing or cannot make '
        'namespaces): allowlisted environment only"; box=(env -i "${keep[@]}"); '
        'evalbox=(env -i "${keep[@]}")'
    )
    prlimit = "".join(f" {x}" for x in (["prlimit", *limits, "--"] if limits else []))
    return "\n".join(
        [
            # =~ with an unquoted variable: a quoted pattern would match literally.
            f"allowed_re={shlex.quote(allowed)}",
            f"secret_re={shlex.quote(secret_name_regex())}",
            f"passed_re={shlex.quote(passed)}",
            "keep=()",
            "for name in $(compgen -e); do",
            "  if [[ $name =~ $allowed_re ]] && "
            "{ ! [[ ${name^^} =~ $secret_re ]] || [[ $name =~ $passed_re ]]; }; then",
            '    keep+=("$name=${!name}")',
            "  fi",
            "done",
            "if command -v bwrap >/dev/null 2>&1 && bwrap --ro-bind / / --proc /proc --dev /dev "
            "--unshare-pid --die-with-parent true >/dev/null 2>&1; then",
            f"  py=$(command -v {shlex.quote(python)} || true)",
            '  box=(env -i "${keep[@]}" bwrap --ro-bind / / --proc /proc --dev /dev '
            "--unshare-user-try --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try "
            f"--die-with-parent --cap-drop ALL{net})",
            f'  for d in "$HOME" /tmp /var/tmp /run {hide}; do '
            '[ -d "$d" ] && box+=(--tmpfs "$d"); done',
            '  for d in "${py:+$(dirname "$(dirname "$py")")}" '
            '"${py:+$(dirname "$(dirname "$(readlink -f "$py")")")}" '
            f'"${{AUTOSWARM_CACHE:-$HOME/.cache/autoswarm}}" {read_only}; do '
            '[ -n "$d" ] && [ -e "$d" ] && box+=(--ro-bind "$d" "$d"); done',
            "  for d in /dev/nvidia* /dev/nvidia-caps /dev/dri /dev/kfd; do "
            '[ -e "$d" ] && box+=(--dev-bind "$d" "$d"); done',
            '  evalbox=("${box[@]}" --ro-bind "$PWD" "$PWD" '
            f'--dir "$ev" --ro-bind "$ev" "$ev" --chdir "$ev" --{prlimit})',
            # The sealed data inside the readable cache is hidden again over it.
            f'  for d in {hidden_data}; do [ -d "$d" ] && box+=(--tmpfs "$d"); done'
            if sealed
            else "  :",
            f'  box+=(--bind "$PWD" "$PWD" --chdir "$PWD" --{prlimit})',
            '  echo "autoswarm: sandbox: bubblewrap on $(hostname)"',
            "else",
            f"  {refuse if mode == 'bwrap' else fallback}",
            "fi",
            "",
        ]
    )


def run_script(job: Job, python: str, sandbox: Mapping[str, Any] | None = None) -> str:
    """Runs the training command in the node's sandbox (:func:`sandbox_prelude`) under a
    hard timeout, and prints the exit markers.

    With a locked evaluation (``job.evaluation``), the locked files are copied out of the
    working directory before training starts (into ``$ev``, under the home directory the
    training sandbox hides), and once training has exited 0 the evaluation runs from
    there; its output follows an ``autoswarm: evaluation`` line and ends with
    ``autoswarm: evaluation exit code N`` (:func:`split_evaluation`).
    """
    cmd = shlex.join(remote_argv(job.argv, python))
    t = max(1, math.ceil(job.timeout_s))
    ev = job.evaluation
    head = "set +e\n"
    if ev is not None:
        files = " ".join(shlex.quote(p) for p, _ in ev.files)
        head += (
            f'ev="$HOME/.autoswarm/eval-{job.experiment_id}-$$"\n'
            f'export AUTOSWARM_MODEL="$PWD/{ev.model}" AUTOSWARM_RUN_DIR="$PWD"\n'
            'rm -rf "$ev" && mkdir -p "$ev" && '
            + (f'cp --parents -- {files} "$ev"/ 2>/dev/null; ' if files else "")
            + 'chmod -R a-w "$ev"\n'
        )
    else:
        head += 'ev="$PWD"\n'
    script = (
        head
        + sandbox_prelude(sandbox or {}, python, ev.sealed if ev is not None else ())
        + f'timeout --kill-after=30 {t} "${{box[@]}}" {cmd}\n'
        "code=$?\n"
        f'if [ "$code" -eq {TIMEOUT_EXIT} ]; then echo "autoswarm: timed out after {t}s"; fi\n'
        'echo "autoswarm: exit code $code"\n'
    )
    if ev is not None:
        et = max(1, math.ceil(ev.timeout_s))
        evcmd = shlex.join(remote_argv(ev.argv, python))
        script += (
            'if [ "$code" -eq 0 ]; then\n'
            "  echo 'autoswarm: evaluation'\n"
            "  start=$SECONDS\n"
            f'  (cd "$ev" && AUTOSWARM_EVALUATION=1 timeout --kill-after=30 {et} '
            f'"${{evalbox[@]}}" {evcmd})\n'
            "  ecode=$?\n"
            '  echo "autoswarm: evaluation took $((SECONDS - start))s"\n'
            '  echo "autoswarm: evaluation exit code $ecode"\n'
            "fi\n"
            'chmod -R u+w "$ev" 2>/dev/null; rm -rf "$ev"\n'
        )
    return script + 'exit "$code"\n'


_EVAL_START = "autoswarm: evaluation\n"
_EVAL_END = re.compile(r"^autoswarm: evaluation exit code (-?\d+)\s*$", re.MULTILINE)
_EVAL_TOOK = re.compile(r"^autoswarm: evaluation took (\d+)s\s*$", re.MULTILINE)


def split_evaluation(log_text: str) -> tuple[str, str | None, int | None, float]:
    """(training's part, evaluation's part or None, its exit code, its seconds) of a log
    written by :func:`run_script`."""
    head, sep, rest = log_text.rpartition(_EVAL_START)
    if not sep:
        return log_text, None, None, 0.0
    end = _EVAL_END.search(rest)
    took = _EVAL_TOOK.search(rest)
    body = rest[: took.start()] if took else rest[: end.start()] if end else rest
    return (
        head,
        body,
        int(end.group(1)) if end else None,
        float(took.group(1)) if took else 0.0,
    )


def task_envs(job: Job, tier: SkyTier, forward: Sequence[str] = ()) -> dict[str, str]:
    """The task's ``envs``: AUTOSWARM_* and ``forward`` variables of Job.env, never a secret."""
    keep = set(forward)
    envs = {
        k: str(v)
        for k, v in sorted(job.env.items())
        if (k.startswith("AUTOSWARM_") or k in keep) and not is_secret_name(k)
    }
    envs["AUTOSWARM_TIER"] = tier.name
    return envs


# ---------------------------------------------------------------------------
# Tasks


def resources_config(tier: SkyTier, mode: str) -> dict[str, Any]:
    """The ``resources`` section of a task on ``tier``."""
    res: dict[str, Any] = {"accelerators": tier.accelerator}
    if tier.infra:
        res["infra"] = tier.infra
    if tier.use_spot:
        res["use_spot"] = True
    if tier.cpus:
        res["cpus"] = tier.cpus
    if tier.memory:
        res["memory"] = tier.memory
    if tier.disk_size:
        res["disk_size"] = tier.disk_size
    if tier.image_id:
        res["image_id"] = tier.image_id
    if mode == "jobs" and tier.job_recovery:
        res["job_recovery"] = dict(tier.job_recovery)
    return res


def task_config(
    job: Job,
    opts: SkyOptions,
    *,
    tag: str = "",
    prepare: Sequence[str] = (),
) -> dict[str, Any]:
    """The SkyPilot task (YAML as a dict) that runs ``job`` in its slot's tier."""
    tier, _ = opts.slot_tier(job.slot)
    return {
        "name": job_name(opts, tag, job.experiment_id),
        "workdir": str(job.workdir),
        "resources": resources_config(tier, opts.mode),
        "envs": task_envs(job, tier, opts.forward_env),
        "setup": setup_script(opts, prepare),
        "run": run_script(job, opts.python, opts.sandbox),
    }


def plan_tasks(cfg: Config, workspace: Path, count: int, *, tag: str = "") -> list[dict[str, Any]]:
    """The tasks of the first ``count`` jobs of a run (the baseline repeats), for --dry-run."""
    opts = dataclasses.replace(parse_pool(cfg.pool), sandbox=sandbox_settings(cfg.sandbox))
    tag = tag or cfg.run.tag
    out = []
    state = workspace / ".autoswarm"
    m = cfg.metric
    # The run script names the locked files (it copies them on the node); no contents.
    evaluation = (
        Evaluation(
            argv=m.evaluate,
            files=tuple((p, b"") for p in cfg.workspace.locked),
            sealed=m.sealed,
            timeout_s=m.evaluate_timeout,
            model=m.model,
        )
        if m.evaluate
        else None
    )
    for i in range(min(count, opts.capacity)):
        exp_id = i + 1
        job = Job(
            experiment_id=exp_id,
            workdir=state / "runs" / f"{exp_id:05d}",
            argv=tuple(cfg.workspace.command),
            env={
                "AUTOSWARM_BUDGET": f"{cfg.run.budget:g}",
                "AUTOSWARM_SEED": str(cfg.run.seed + i),
                "AUTOSWARM_EXPERIMENT": str(exp_id),
            },
            timeout_s=cfg.run.effective_timeout,
            slot=i,
            log_path=state / "logs" / f"{exp_id:05d}.log",
            budget_s=cfg.run.budget,
            tier=opts.slot_tier(i)[0].name,
            evaluation=evaluation,
        )
        out.append(task_config(job, opts, tag=tag, prepare=cfg.workspace.prepare))
    return out


__all__ = [
    "MODES",
    "RECOVERY_STRATEGIES",
    "SkyOptions",
    "SkyTier",
    "cluster_name",
    "exit_marker",
    "job_name",
    "parse_pool",
    "plan_tasks",
    "read_exit",
    "remote_argv",
    "resources_config",
    "run_script",
    "sandbox_prelude",
    "setup_script",
    "split_evaluation",
    "task_config",
    "task_envs",
]
