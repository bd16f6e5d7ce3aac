"""Where a command will write, checked before it does any work: one line naming the output, not a traceback
after an hour of translating."""

from __future__ import annotations

import tempfile
from pathlib import Path

from dist_s2s.errors import UserError


def writable_dir(path: Path | str, what: str) -> None:
    """`path` exists as a directory this process can create files in (made, with its parents, if missing)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dist-s2s-probe-"):
            pass
    except OSError as error:
        raise UserError(f"{what} {path} cannot be written: {error.strerror or error}") from None


def writable_file(path: Path | str | None, what: str) -> None:
    """`path` (None: standard output) can be written: its directory is writable and it is not a directory."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    writable_dir(path.parent if str(path.parent) else Path("."), f"{what} {path}: its directory")
    if path.exists() and not _can_append(path):
        raise UserError(f"{what} {path} cannot be written: permission denied")


def _can_append(path: Path) -> bool:
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False
