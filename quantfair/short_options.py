"""The short option forms of the audit suite (`--model`, `--quant`, `--languages`, ...) and its
`quick` marker, as an opt-in pytest plugin.

The pytest11 entry point does not load this module, so it can never collide with another
project's options or markers. Load it where the audit suite runs: `pytest_plugins =
["quantfair.short_options"]` in a root conftest.py (as this repository does), `-p
quantfair.short_options`, or `addopts = -p quantfair.short_options` in an ini file. Each short
form sets the same value as its `--quantfair-` form.
"""

from __future__ import annotations

import pytest

from quantfair.config import OPTIONS, add_options, conftest_modules


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """The short forms not already taken: a project that defines its own `--model` and runs
    the suite (`--pyargs quantfair.audits`, which may load this module through the checkout's
    conftest.py) keeps its option, and the `--quantfair-` forms stay. Loaded with `-p`, this
    runs before plugins of entry points and conftest files declare theirs: the short forms
    are then declared after conftest files (`pytest_load_initial_conftests`), even with the
    plugin disabled (`-p no:quantfair`)."""
    loaded = any(map(pluginmanager.has_plugin, ("quantfair", "quantfair.plugin")))  # `-p` of it
    if loaded or (pluginmanager.is_blocked("quantfair") and not _before_conftests(pluginmanager)):
        _add_untaken(parser)


def _before_conftests(pluginmanager: pytest.PytestPluginManager) -> bool:
    """Whether no conftest file is registered yet: this module was loaded with `-p`."""
    return not any(conftest_modules(pluginmanager))


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(parser: pytest.Parser):
    """Called only where this module was loaded before conftest files (`-p`)."""
    try:
        return (yield)
    finally:
        _add_untaken(parser)


def _add_untaken(parser: pytest.Parser) -> None:
    taken = _taken(parser)
    add_options(parser.getgroup("quantfair").addoption, prefix="",
                names=[name for name in OPTIONS if f"--{name}" not in taken])


def _taken(parser: pytest.Parser) -> set[str]:
    """Option strings registered so far (pytest has no public API listing them)."""
    groups = [*getattr(parser, "_groups", ()), getattr(parser, "_anonymous", None)]
    return {flag for group in groups if group is not None
            for option in getattr(group, "options", ()) for flag in option.names()}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick: a quantfair audit small enough for CI "
                                       "(the same as quantfair_quick)")
    if config.pluginmanager.is_blocked("quantfair"):  # its audits are still collected
        _refuse_typed_options(config)
        add_markers(config)


def add_markers(config: pytest.Config) -> None:
    """Declare the plugin's markers, which its audits carry, where the plugin is disabled."""
    from quantfair.plugin import MARKERS

    for marker in MARKERS:
        config.addinivalue_line("markers", marker)


def _refuse_typed_options(config: pytest.Config) -> None:
    """Short forms typed on the command line with the plugin disabled ask for an audit that
    will not run (a release gate's `--model M --baseline B` would pass having checked
    nothing); set in an ini file's addopts, they are left, and the audits skipped."""
    typed = {str(argument).partition("=")[0] for argument in config.invocation_params.args}
    given = [f"--{name}" for name, option in OPTIONS.items() if option.short
             and f"--{name}" in typed
             and config.getoption(option.dest, default=None) not in (None, False)]
    if given:
        raise pytest.UsageError(f"{', '.join(given)} given, but quantfair's plugin is disabled "
                                "(-p no:quantfair): no audit would run; drop one or the other")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`-m quick` selects the quantfair_quick audits (this runs before -m deselects); with
    the plugin disabled (`-p no:quantfair`), its audits are skipped with the reason, not
    errors for want of its fixture; a `-m` selecting only the release gates then asks for a
    gate that would pass on skipped audits: a usage error."""
    for item in items:
        if item.get_closest_marker("quantfair_quick") and not item.get_closest_marker("quick"):
            item.add_marker(pytest.mark.quick)
    if config.pluginmanager.is_blocked("quantfair"):
        skip_audits(config, items)


def skip_audits(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the audits among `items`, the plugin being disabled; a usage error where `-m`
    selects only release gates."""
    from quantfair.plugin import selects_release_gates

    if selects_release_gates(config):
        raise pytest.UsageError(f"-m {config.getoption('markexpr')!r} selects the release "
                                "gates, but quantfair's plugin is disabled (-p no:quantfair): "
                                "no gate would be checked; drop one or the other")
    for item in items:
        if item.get_closest_marker("quantfair"):
            item.add_marker(pytest.mark.skip(reason="quantfair's plugin is disabled "
                                                    "(-p no:quantfair)"))
