"""The one exception type users see as a message instead of a traceback."""


class UserError(Exception):
    """Bad input, config or environment: the CLI prints it on one line and exits non-zero.

    The message must name what is wrong and where (file and line, or config key), so the
    user can fix it without reading our code.
    """
