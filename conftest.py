"""Repository-level pytest settings for quantfair's own audits and tests.

The audit machinery is the installed `quantfair` pytest plugin (entry point pytest11); the
short option forms (`--model`, `-m quick`) come from the opt-in `quantfair.short_options`.
"""

pytest_plugins = ["quantfair.short_options"]

collect_ignore = ["benchmarks", "scripts"]
