"""With quantfair's plugin disabled (`-p no:quantfair`) these audits are skipped saying so, as
`quantfair.short_options` does where it is loaded, also where it is not: an installed package
collected with `--pyargs quantfair.audits`, no conftest.py above it."""

import pytest

from quantfair import short_options


def _unhandled(config: pytest.Config) -> bool:
    """The plugin disabled and short_options, which skips the audits then, not loaded."""
    plugins = config.pluginmanager
    return plugins.is_blocked("quantfair") and not plugins.has_plugin("quantfair.short_options")


def pytest_configure(config: pytest.Config) -> None:
    if _unhandled(config):
        short_options.add_markers(config)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _unhandled(config):
        short_options.skip_audits(config, items)
