"""The one exception type that means "the user asked for something impossible" (shown as one line, exit 2)."""


class UserError(Exception):
    """A mistake in the user's input: the message says what is wrong and how to fix it."""
