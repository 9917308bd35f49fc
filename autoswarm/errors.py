"""One error tree for autoswarm.

Experiment failures (a crash, a timeout, NaN, an out-of-memory) are *data*: they
become a ``crash`` row in the ledger, never an exception. Exceptions are for bad
configuration, misuse and orchestrator bugs, and every message says what to do next.

    AutoswarmError
    ├── ConfigError            autoswarm.toml or a flag is wrong
    ├── WorkspaceError         not a workspace, not a git repo, dirty or missing files
    │   └── LockedFileError    a variant touches a file that may not change
    ├── PatchError             a diff is malformed or does not apply to the files
    ├── RunLockedError         another `autoswarm run` owns this workspace
    ├── RunStateError          resume/tag conflicts, a run that cannot continue
    │   └── BaselineError      the unmodified train.py does not produce a metric
    ├── LedgerError            the SQLite ledger is unreadable or from a newer version
    ├── BackendError           a backend cannot start or reach its workers
    │   └── BackendCallError   one call to a backend's SDK or cluster failed (Ray, SkyPilot)
    └── ProposerError          a proposer is misconfigured or cannot go on
"""

from __future__ import annotations


class AutoswarmError(Exception):
    """Base of every error autoswarm raises on purpose."""


class ConfigError(AutoswarmError):
    """autoswarm.toml or a command-line option is invalid."""


class WorkspaceError(AutoswarmError):
    """The directory is not a usable autoswarm workspace."""


class LockedFileError(WorkspaceError):
    """A variant changes a file that is locked or not editable."""


class PatchError(AutoswarmError):
    """A diff is not a unified diff, or its hunks do not match the files."""


class RunLockedError(AutoswarmError):
    """Another orchestrator process already runs on this workspace."""


class RunStateError(AutoswarmError):
    """The requested run cannot start or continue in the ledger's current state."""


class BaselineError(RunStateError):
    """The unmodified train.py failed, so there is nothing to compare against."""


class LedgerError(AutoswarmError):
    """The ledger database cannot be opened, migrated or written."""


class BackendError(AutoswarmError):
    """A backend could not start, reach its workers or launch a job."""


class BackendCallError(BackendError):
    """One call to a backend's SDK or cluster (Ray, SkyPilot and its API server) failed.

    Raised only by a backend's error boundary (``ray_errors`` in
    :mod:`autoswarm.backends.ray`, ``sdk_errors`` in :mod:`autoswarm.backends.skymodes`),
    which maps whatever the SDK raised to this one type with one message shape:
    ``<what> failed (<SDK error type>: <its first line>): <next step>``. The backend
    decides what the failure means for the experiment (re-run it, end it with an
    error, try again on the next poll); it reaches the scheduler only where the old
    code raised a BackendError too.

    Attributes:
        what: the call, in words ("`sky down autoswarm-t-h100-0`").
        reason: the SDK's error, short: its type and the first line of its message.
        hint: what to do next.
        gone: the thing called no longer exists (a cluster that is down or deleted, a
            Ray actor that died): an answer, not a hiccup.
    """

    def __init__(self, what: str, cause: BaseException, *, hint: str, gone: bool = False) -> None:
        self.what = what
        self.reason = brief(cause)
        self.hint = hint
        self.gone = gone
        super().__init__(f"{what} failed ({self.reason}): {hint}")


def brief(e: BaseException) -> str:
    """``<type>: <first line of the message>`` of an exception, at most 300 characters."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class ProposerError(AutoswarmError):
    """A proposer is misconfigured or cannot produce proposals."""


__all__ = [
    "AutoswarmError",
    "BackendCallError",
    "BackendError",
    "BaselineError",
    "ConfigError",
    "LedgerError",
    "LockedFileError",
    "PatchError",
    "ProposerError",
    "RunLockedError",
    "RunStateError",
    "WorkspaceError",
    "brief",
]
