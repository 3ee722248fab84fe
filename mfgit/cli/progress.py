"""Progress on a terminal: silent when stderr is not one, or with --quiet / --json."""

from __future__ import annotations

import sys
import time

from mfgit.render.text import human_bytes


class progress_bar:
    """A progress bar on stderr when it is a terminal; silent otherwise.

    Used as ``with progress_bar(label) as cb: work(progress=cb)`` where the
    work calls ``cb(done, total, item)``.
    """

    def __init__(self, label: str, *, quiet: bool = False, unit: str = ""):

        self.label = label
        self.enabled = not quiet and sys.stderr.isatty()
        self.unit = unit
        self._bar = None

    def __enter__(self):
        return self.update

    def update(self, done: int, total: int, item: str = "") -> None:
        if not self.enabled:
            return
        import click

        if self._bar is None:
            # On stderr, the terminal checked above: stdout is the command's output.
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


class byte_progress:
    """Bytes-and-rate progress on stderr (a terminal only): ``cb(done, total)`` or ``cb(done, total, item)``."""

    def __init__(self, label: str, *, quiet: bool = False):

        self.label = label
        self.enabled = not quiet and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __enter__(self):
        return self.update

    def update(self, done: int, total: int, item: str = "") -> None:
        if not self.enabled:
            return

        now = time.perf_counter()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        sys.stderr.write(f"\r{self.label}: {pct:5.1f}% {human_bytes(done)} / {human_bytes(total)}, {human_bytes(rate)}/s ")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            sys.stderr.write("\n")
