"""Progress of long work: a tqdm bar on a terminal, plain lines in a log or pipe, nothing when disabled.

A bar redraws itself in place, which a log file or a pipe cannot show (tqdm then either stays
silent or fills the log with carriage returns), so off a terminal this prints a plain line such
as ``eval eps=0.1: 512/2000 images, 23 s`` at most every :data:`PLAIN_INTERVAL_S` seconds, and
one more when the work ends.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterable, Optional, TextIO

#: seconds between two plain progress lines (off a terminal); tests lower it
PLAIN_INTERVAL_S = 10.0
_quiet = 0  # > 0 inside quiet(): --no-progress also reaches the bars of library code (full CROWN's)


@contextlib.contextmanager
def quiet():
    """Silences every progress display made inside the block (the command line's ``--no-progress``)."""
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Silent:
    """What ``progress(..., disable=True)`` returns: iterates like its iterable; updates do nothing."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        """Does nothing."""

    def set_postfix(self, **kwargs) -> None:
        """Does nothing."""

    def close(self) -> None:
        """Does nothing."""


class PlainProgress(_Silent):
    """Plain progress lines ``DESC: DONE/TOTAL UNIT, ELAPSED s[, key=value, ...]`` on ``stream``.

    A line when at least ``interval`` seconds passed since the last one (checked at each
    ``update``, so a single step longer than ``interval`` gives one line, not several), and,
    unless ``leave=False`` (a transient bar), a final line at ``close`` (which iterating to the
    end, or leaving a ``with`` block without an exception, calls). ``clock`` is injectable for tests.
    """

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", leave: bool = True, stream: Optional[TextIO] = None,
                 interval: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.stream = sys.stderr if stream is None else stream
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self.clock = clock
        self.done, self.postfix, self.closed, self.shown = 0, {}, False, None
        self.start = self.last = clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # only after a complete pass: a consumer that raised must not print "done"

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        return False

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more units done; prints a line if ``interval`` seconds passed since the last."""
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, **kwargs) -> None:
        """Values appended to the following lines as ``key=value`` (as tqdm's ``set_postfix``)."""
        self.postfix = kwargs

    def close(self) -> None:
        """Prints the final line (once; none for ``leave=False`` or if the last line already said it)."""
        if not self.closed:
            self.closed = True
            if self.leave and self.shown != self.done:
                self._line(self.clock())

    def _line(self, now: float) -> None:
        self.shown = self.done
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {count} {self.unit}, {now - self.start:.0f} s{extra}", file=self.stream, flush=True)


def progress(iterable: Optional[Iterable] = None, *, desc: str = "", total: Optional[int] = None, unit: str = "it",
             disable: Optional[bool] = None, leave: bool = True, stream: Optional[TextIO] = None,
             interval: Optional[float] = None, **tqdm_kwargs):
    """Progress of ``iterable`` (or, without one, of ``update(n)`` calls up to ``total``).

    On a terminal a tqdm bar (plain lines if tqdm is not installed); otherwise plain lines at most
    every ``interval`` seconds (default :data:`PLAIN_INTERVAL_S`) and, unless ``leave=False``, at the
    end. ``disable=True`` or inside :func:`quiet`: nothing. ``stream`` defaults to ``sys.stderr``
    (looked up at call time, so redirections count).
    The result iterates like ``iterable`` and has ``update``, ``set_postfix`` and ``close``, and is
    a context manager. ``tqdm_kwargs`` go to the bar only.
    """
    if disable or _quiet:
        return _Silent(iterable)
    stream = sys.stderr if stream is None else stream
    if _isatty(stream):
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional
            pass
        else:
            tqdm_kwargs.setdefault("mininterval", 0.5)
            return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream, **tqdm_kwargs)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, stream=stream, interval=interval)
