"""With quantfair's plugin disabled (`-p no:quantfair`) these audits are skipped saying so, as
`quantfair.short_options` does where it is loaded, also where it is not: an installed package
collected with `--pyargs quantfair.audits`, no conftest.py above it. With the plugin not loaded
at all (plugin autoloading off), collecting them is a usage error: they would pass unchecked."""

import pytest

from quantfair import short_options


def _unhandled(config: pytest.Config) -> bool:
    """The plugin disabled and short_options, which skips the audits then, not loaded."""
    plugins = config.pluginmanager
    return plugins.is_blocked("quantfair") and not plugins.has_plugin("quantfair.short_options")


def _absent(config: pytest.Config) -> bool:
    """The plugin neither loaded nor disabled: PYTEST_DISABLE_PLUGIN_AUTOLOAD, no `-p`."""
    plugins = config.pluginmanager
    return not plugins.is_blocked("quantfair") and not any(
        map(plugins.has_plugin, ("quantfair", "quantfair.plugin")))


def pytest_configure(config: pytest.Config) -> None:
    if _unhandled(config) or _absent(config):
        short_options.add_markers(config)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _absent(config) and any(item.get_closest_marker("quantfair") for item in items):
        raise pytest.UsageError("quantfair's plugin is not loaded (plugin autoloading is off: "
                                "PYTEST_DISABLE_PLUGIN_AUTOLOAD): add -p quantfair.plugin to "
                                "run the audits")
    if _unhandled(config):
        short_options.skip_audits(config, items)
