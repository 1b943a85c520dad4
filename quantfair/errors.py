"""Errors a user can cause; the CLI and the plugin print them as one line."""

TERMINATED = "terminated by SIGTERM"  # a KeyboardInterrupt's message: stopped as on Ctrl-C


def os_error_text(error: OSError) -> str:
    """An OSError as an error line says it: its reason and, where it names one, the file."""
    if not error.strerror:
        return str(error)
    return f"{error.strerror}: {error.filename}" if error.filename else error.strerror


class QuantfairError(Exception):
    """Bad input or a missing resource, explained in one line."""


class UsageError(QuantfairError):
    """The user asked for something that does not exist (strategy, language, bits, ...)."""
