"""One real pipeline step as the engines executed it, and the picture of it beside the simulator's.

A pipeline's steps record their engine's instructions (`record_timeline()`): the wavefront engine
times them itself (its `timeline` list, with the time each operation waited for a message apart);
DeepSpeed's 1F1B engine gets a timed copy of its own dispatch loop on the instance (its
`_exec_schedule` is looked up there), where a blocking receive's time is the stage's idle time.
"""

from __future__ import annotations

from pathlib import Path

COLOURS = {"forward": "#4C72B0", "backward": "#DD8452", "softmax": "#55A868", "weights": "#C44E52",
           "send": "#8172B2", "idle": "#DDDDDD", "step": "#333333"}
CATEGORY = {"F": "forward", "ForwardPass": "forward", "LoadMicroBatch": "forward",
            "B": "backward", "BackwardPass": "backward",
            "P": "softmax", "L": "softmax", "Q": "softmax", "W": "weights", "E": "weights",
            "SendActivation": "send", "SendGrad": "send", "PostReceives": "send", "WaitSends": "send",
            "RecvActivation": "idle", "RecvGrad": "idle",
            "ReduceGrads": "step", "OptimizerStep": "step", "ReduceTiedGrads": "step"}


def as_rows(entries_by_stage: list[list[dict]]) -> list[list[tuple[str, float, float]]]:
    """Per stage, (category, start, end) bars relative to the step's first instruction; a wait is an
    idle bar before the work it waited for."""
    origin = min(entry["start"] for entries in entries_by_stage for entry in entries)
    rows = []
    for entries in entries_by_stage:
        bars = []
        for entry in entries:
            start = entry["start"] - origin
            if entry["wait_s"] > 0:
                bars.append(("idle", start, start + entry["wait_s"]))
            if entry["compute_s"] > 0:
                begin = start + entry["wait_s"]
                bars.append((CATEGORY.get(entry["kind"], "step"), begin, begin + entry["compute_s"]))
        rows.append(bars)
    return rows


def simulated_rows(timeline: list[dict], stages: int) -> list[list[tuple[str, float, float]]]:
    rows: list[list[tuple[str, float, float]]] = [[] for _ in range(stages)]
    for entry in timeline:
        if entry["idle_before"] > 0:
            rows[entry["stage"]].append(("idle", entry["start"] - entry["idle_before"], entry["start"]))
        rows[entry["stage"]].append((CATEGORY[entry["kind"]], entry["start"], entry["end"]))
    return rows


def plot(panels: list[tuple[str, list[list[tuple[str, float, float]]]]], path: Path) -> Path:
    """One panel per (title, rows): one row per stage, bars coloured by what the stage was doing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    height = sum(1.0 + 0.45 * len(rows) for _, rows in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, height), squeeze=False)
    end = max(bar[2] for _, rows in panels for row in rows for bar in row)
    for axis, (title, rows) in zip(axes[:, 0], panels):
        for stage, bars in enumerate(rows):
            for category, start, stop in bars:
                axis.broken_barh([(1000 * start, 1000 * (stop - start))], (stage - 0.4, 0.8),
                                 facecolors=COLOURS[category], linewidth=0)
        axis.set_yticks(range(len(rows)), [f"stage {s}" for s in range(len(rows))])
        axis.invert_yaxis()
        axis.set_xlim(0, 1000 * end)
        axis.set_title(title, fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("milliseconds into the step")
    figure.legend(handles=[Patch(color=colour, label=name) for name, colour in COLOURS.items()],
                  loc="upper right", ncol=len(COLOURS), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
