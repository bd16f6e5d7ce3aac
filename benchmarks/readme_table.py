"""Regenerate the benchmark table of docs/benchmarks.md from the committed `benchmarks/results/bench-*.json`.

    .venv/bin/python benchmarks/readme_table.py          # rewrites docs/benchmarks.md between the bench-table markers
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def render() -> str:
    lines = ["| config | device | mode | threads/rank | micro-batches | words/s | × plain | MFU | peak MB | commit |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for path in sorted((REPO / "benchmarks" / "results").glob("bench-*.json")):
        result = json.loads(path.read_text())
        config = Path(result["config"]).stem
        device = f"{result['device']} ({result['cores']} cores)" if result["device_type"] == "cpu" else result["device"]
        for run in result["runs"]:
            ratio = f"{run['vs_plain']:.2f}×" if run.get("vs_plain") else "–"
            flag = " ⚠ oversubscribed" if run["oversubscribed"] else ""
            lines.append(f"| {config} | {device} | {run['label']}{flag} | {run['threads_per_rank']} | "
                         f"{run['micro_batches']} | {run['words_per_sec']:,.0f} | {ratio} | {100 * run['mfu']:.1f}% | "
                         f"{run['peak_mem_mb']:,.0f} | {result['commit']} |")
    return "\n".join(lines)


def main() -> None:
    readme = REPO / "docs" / "benchmarks.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} … {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render()}\n{END}{tail}")


if __name__ == "__main__":
    main()
