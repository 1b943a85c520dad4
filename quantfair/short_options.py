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

from quantfair.config import add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser.getgroup("quantfair").addoption, prefix="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick: a quantfair audit small enough for CI "
                                       "(the same as quantfair_quick)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`-m quick` selects the quantfair_quick audits (this runs before -m deselects)."""
    for item in items:
        if item.get_closest_marker("quantfair_quick") and not item.get_closest_marker("quick"):
            item.add_marker(pytest.mark.quick)
