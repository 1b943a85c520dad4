import contextlib

from quantfair import progress


def test_a_bar_is_drawn_at_its_first_update_and_ends_at_the_tokens_the_evaluator_scores():
    """Its total is the evaluator's windows' tokens (a BOS token each, the FP pass of a
    distribution), from its first line on: a log once showed the texts' token count first."""
    update = progress.token_bars()("int4 protecting none")
    assert not progress._open  # nothing drawn before the evaluator's first report
    update(0, 200)
    bar = progress._open[-1]
    assert (bar.n, bar.total) == (0, 200)
    update(120, 200)
    assert (bar.n, bar.total) == (120, 200)
    update(200, 200)
    assert bar not in progress._open  # closed at its end


def test_a_bar_writes_only_inside_its_guard_and_a_stale_one_is_closed():
    """Under pytest, the guard suspends output capture: a write outside it would land in a
    test's captured output. An evaluation that raised leaves its bar open: the next closes
    it, so bars never stack."""
    inside = []

    @contextlib.contextmanager
    def guard():
        inside.append(True)
        yield
        inside.pop()

    writes = []
    bars = progress.token_bars(guard)
    first = bars("int4 protecting L0")
    first(0, 100)
    stale = progress._open[-1]
    stale.fp.write = lambda text: writes.append(bool(inside))
    first(50, 100)
    bars("int4 protecting L1")(100, 100)
    assert stale.disable and stale not in progress._open  # closed by the next bar
    assert writes and all(writes)


def test_a_bar_in_a_log_is_redrawn_seldom(monkeypatch):
    """Where stderr is no terminal every redraw stays in the log: one every LOG_INTERVAL s."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    update = progress.token_bars()("int4 protecting none")
    update(0, 100)
    bar = progress._open[-1]
    assert bar.mininterval == progress.LOG_INTERVAL >= 5
    update(100, 100)


def test_a_bar_in_a_log_ends_its_line_at_its_end_and_where_it_stopped(monkeypatch, capsys):
    """In a log the next line (`quantfair: evaluating ...`) was written after the bar's
    clearing carriage returns, on its line, and the log showed only 0%."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    bars = progress.token_bars()
    bars("int4 protecting none")(100, 100)
    bars("int4 protecting L0")(40, 100)
    progress.close_bars()  # an error stopped it
    lines = capsys.readouterr().err.split("\n")
    assert lines[0].rsplit("\r", 1)[-1].startswith("int4 protecting none: 100%")
    assert lines[1].rsplit("\r", 1)[-1].startswith("int4 protecting L0:  40%")
    assert lines[2] == ""
