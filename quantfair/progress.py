"""Progress bars of long evaluations: tokens scored, rate and ETA (tqdm), on stderr, for the
command line and for the pytest plugin."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Guard = Callable[[], contextlib.AbstractContextManager]
Update = Callable[[int, int], None]

_open: list = []  # bars not yet at their end
LOG_INTERVAL = 10.0  # seconds between a bar's redraws where stderr is not a terminal
_notices: ContextVar[Callable[[str], None] | None] = ContextVar("notices", default=None)


def notice(message: str) -> None:
    """Say `message`, a line on work under way ("quantfair: converting ..."), where the
    command says its lines (`notices_to`), else on stderr: the pytest plugin writes around
    its output capture, which kept a minute's conversion of Gemma 3 off the terminal."""
    say = _notices.get()
    if say is None:
        print(message, file=sys.stderr, flush=True)
    else:
        say(message)


@contextlib.contextmanager
def notices_to(announce: Callable[[str], None]) -> Iterator[None]:
    """Within it, `notice` says its lines through `announce`."""
    token = _notices.set(announce)
    try:
        yield
    finally:
        _notices.reset(token)


def token_bars(guard: Guard = contextlib.nullcontext) -> Callable[[str], Update]:
    """A `progress` for `AuditSession`: `progress(label)` returns the `update(done, scored)` of
    a bar that is drawn at its first update and ends at `scored`, the tokens the evaluator's
    windows score (a BOS token each, the FP pass of a distribution: more than the texts'
    tokens). `guard()`: the context in which a bar may write (the pytest plugin's suspends
    output capture). One evaluation runs at a time: opening a bar closes any left open by an
    evaluation that raised."""

    def open_bar(label: str) -> Update:
        from tqdm import tqdm

        close_bars(guard)
        bar = None  # drawn at the first update

        def update(done: int, scored: int) -> None:
            nonlocal bar
            with guard():
                if bar is None:
                    # in a log (no terminal) every redraw stays: one every LOG_INTERVAL s, and
                    # the last (its end, or where it stopped) ends its line, for the next
                    log = not sys.stderr.isatty()
                    bar = tqdm(total=scored, desc=label, unit="tok", unit_scale=True,
                               file=sys.stderr, leave=log,
                               mininterval=LOG_INTERVAL if log else 0.1)
                    _open.append(bar)
                bar.total = scored
                bar.update(done - bar.n)
                if done >= scored and bar in _open:
                    _open.remove(bar)
                    bar.close()

        return update

    return open_bar


def close_bars(guard: Guard = contextlib.nullcontext) -> None:
    """Close the bars still open (before an error line, so that it starts a line of its own)."""
    with guard():
        while _open:
            _open.pop().close()
