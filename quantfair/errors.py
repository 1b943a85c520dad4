"""One exception type for everything a user can get wrong; the CLI and plugin print it as one line."""


class QuantfairError(Exception):
    """Bad input or a missing resource, explained in one line."""


class UsageError(QuantfairError):
    """The user asked for something that does not exist (strategy, language, bits, ...)."""
