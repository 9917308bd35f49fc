"""The live view of ``autoswarm run``: slots and what each runs, progress, best so far.

It only reads :meth:`Scheduler.snapshot` (a copy made under the scheduler's lock),
refreshing a few times a second from rich's own thread. Without a terminal,
:func:`print_event_lines` prints one line per finished experiment instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from autoswarm.types import Status

if TYPE_CHECKING:
    from autoswarm.scheduler import Scheduler, Snapshot


def render(s: Snapshot, metric: str, banner: str = "") -> RenderableType:
    c = s.counts
    head = Text.assemble(
        ("autoswarm ", "bold"),
        (f"run {s.tag}  ", "cyan"),
        f"{c.get('total', 0)} experiments: ",
        (f"{c.get('keep', 0)} keep ", "green"),
        f"{c.get('discard', 0)} discard ",
        (f"{c.get('crash', 0) + c.get('rejected', 0)} crash ", "red"),
        f"| elapsed {s.elapsed_s / 60:.1f} min",
        f" of {s.time_limit_s / 60:.0f}" if s.time_limit_s else "",
        f" | max {s.max_experiments}" if s.max_experiments else "",
    )
    best = Text("best: waiting for the baseline")
    if s.best is not None:
        noise = (
            f"  σ={s.baseline.sigma:.4f} ({len(s.baseline.values)} runs)"
            if s.baseline and s.baseline.values
            else ""
        )
        base = f"  baseline {s.baseline.mean:.6f}" if s.baseline and s.baseline.values else ""
        best = Text(
            f"best {metric}: {s.best.value:.6f} (#{s.best.experiment_id}){base}{noise}",
            style="bold green",
        )
    slots = Table(show_header=True, header_style="bold", expand=False)
    slots.add_column("slot")
    slots.add_column("exp")
    slots.add_column("running for")
    slots.add_column("description")
    for i, v in enumerate(s.slots):
        if v is None:
            slots.add_row(str(i), "-", "", Text("idle", style="dim"))
        else:
            slots.add_row(
                str(i),
                f"#{v.experiment_id}",
                f"{max(0.0, s.now - v.started_at):.0f}s",
                v.description,
            )
    recent = Table(show_header=True, header_style="bold", title="recent", title_justify="left")
    for col in ("exp", metric, "status", "description"):
        recent.add_column(col)
    colors = {
        Status.KEEP: "green",
        Status.CRASH: "red",
        Status.FORGED: "bold red",
        Status.REJECTED: "red",
        Status.REVOKED: "yellow",
    }
    for e in reversed(s.recent):
        val = e.value(metric)
        recent.add_row(
            f"#{e.id}",
            "-" if val is None else f"{val:.6f}",
            Text(e.status.value, style=colors.get(e.status, "")),
            (
                e.description
                + (f" — {e.reason}" if e.reason and e.status is not Status.KEEP else "")
            )[:100],
        )
    notes = [Text(f"note: {text}", style="yellow") for _, text in s.events[-3:]]
    top = [head, Text(banner, style="dim")] if banner else [head]
    return Group(*top, best, slots, recent, *notes)


class LiveView:
    """Context manager that shows :func:`render` of the scheduler while a run goes on."""

    def __init__(self, scheduler: Scheduler, console: Console, banner: str = "") -> None:
        self.sched = scheduler
        self.live = Live(
            console=console,
            refresh_per_second=2,
            get_renderable=lambda: render(self.sched.snapshot(), self.sched.metric, banner),
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)


def print_event_lines(scheduler: Scheduler, console: Console) -> Callable[[], None]:
    """An ``on_change`` callback printing each experiment once, when it finishes or starts."""
    printed: set[tuple[int, str]] = set()

    def on_change() -> None:
        s = scheduler.snapshot()
        for v in s.slots:
            if v is not None and (v.experiment_id, "start") not in printed:
                printed.add((v.experiment_id, "start"))
                console.print(
                    f"[dim]start  #{v.experiment_id} slot {v.slot}: {escape(v.description)}[/]"
                )
        for e in s.recent:
            if (e.id, "end") in printed:
                continue
            printed.add((e.id, "end"))
            val = e.value(scheduler.metric)
            txt = "-" if val is None else f"{val:.6f}"
            best = f" | best {s.best.value:.6f}" if s.best else ""
            reason = f" ({e.reason})" if e.reason and e.status is not Status.KEEP else ""
            console.print(
                escape(f"{e.status.value:<8} #{e.id} {txt} {e.description}{reason}{best}")
            )
        for n, text in s.events:
            if (n, "event") not in printed:
                printed.add((n, "event"))
                console.print(f"[yellow]note[/]     {escape(text)}")

    return on_change


__all__ = ["LiveView", "print_event_lines", "render"]
