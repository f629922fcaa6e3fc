"""Exception types shared across the package, so callers (CLI, node) can catch one family per fault."""


class DataError(ValueError):
    """A file or message that cannot be used as it is; the message names the file (or field) and the fault."""
