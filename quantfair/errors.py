"""Errors a user can cause; the CLI and the plugin print them as one line."""

TERMINATED = "terminated by SIGTERM"  # a KeyboardInterrupt's message: stopped as on Ctrl-C


class QuantfairError(Exception):
    """Bad input or a missing resource, explained in one line."""


class UsageError(QuantfairError):
    """The user asked for something that does not exist (strategy, language, bits, ...)."""
