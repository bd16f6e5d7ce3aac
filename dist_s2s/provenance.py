"""Where a recorded figure came from: the commit and the resolved config, written beside it.

Every JSON under benchmarks/results/ carries these, so that a table made from it (README, docs) can say
what produced each number, and a rerun can start from the same settings.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def commit() -> str | None:
    """The checkout's commit (short hash), with `+dirty` when tracked files differ from it; None outside git."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=REPO).returncode != 0
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance(config, *, config_path: str | None, overrides: list[str] = ()) -> dict[str, Any]:
    """The fields every recorded result starts with."""
    return {"config": config_path, "overrides": list(overrides), "resolved_config": config.to_dict(),
            "commit": commit(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
