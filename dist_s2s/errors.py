"""The one exception type users see as a message instead of a traceback."""


class UserError(Exception):
    """Bad input, config or environment: the CLI prints it on one line and exits non-zero.

    The message must name what is wrong and where (file and line, or config key), so the
    user can fix it without reading our code.
    """


class Terminated(BaseException):
    """SIGTERM arrived: torchrun and the deepspeed launcher send it to every rank when one rank dies.

    A BaseException, as KeyboardInterrupt is, so that no library's `except Exception` swallows it
    (one inside DeepSpeed's step did, and the rank trained on)."""
