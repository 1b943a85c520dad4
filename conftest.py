"""Repository-level pytest settings for quantfair's own audits and tests.

The audit machinery itself is the installed `quantfair` pytest plugin (entry point pytest11).
"""

collect_ignore = ["benchmarks", "scripts"]
