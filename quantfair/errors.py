"""Errors a user can cause; the CLI and the plugin print them as one line."""

TERMINATED = "terminated by SIGTERM"  # `Terminated`'s message


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, a CI job cancelled): the run stops as on Ctrl-C, and pytest says
    it in one line, without the location in quantfair's code that a KeyboardInterrupt gets."""

    def __init__(self) -> None:
        super().__init__(TERMINATED)


def os_error_text(error: OSError) -> str:
    """An OSError as an error line says it: its reason and, where it names one, the file."""
    if not error.strerror:
        return str(error)
    return f"{error.strerror}: {error.filename}" if error.filename else error.strerror


class QuantfairError(Exception):
    """Bad input or a missing resource, explained in one line."""


class UsageError(QuantfairError):
    """The user asked for something that does not exist (strategy, language, bits, ...)."""


class NotInModel(UsageError):
    """A strategy names what this model does not have (a layer past its last, a term that
    keeps nothing of it): the user's own strategy is wrong, a finding's does not apply."""
