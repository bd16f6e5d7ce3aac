"""The best checkpoint so far by a validation measure, and the patience of early stopping.

Rank 0 keeps it. It is rebuilt on resume from the evaluations `index.json` lists (every checkpoint's score,
written with the checkpoint's entry), so a resumed run ranks and stops exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

LOWER_IS_BETTER = {"ppl": True, "bleu": False}


@dataclass
class BestSoFar:
    metric: str
    value: float | None = None
    step: int | None = None
    since: int = 0
    """Evaluations since the best one (0 right after an improvement)."""

    def improves(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if LOWER_IS_BETTER[self.metric] else value > self.value

    def observe(self, step: int, value: float) -> bool:
        """Count step's evaluation; whether it is the new best (ties keep the older checkpoint)."""
        if self.improves(value):
            self.value, self.step, self.since = value, step, 0
            return True
        self.since += 1
        return False

    @classmethod
    def replay(cls, metric: str, evaluations: list[dict]) -> BestSoFar:
        """The state after the listed evaluations of `metric` ({"step", "metric", "value"}), in step order."""
        best = cls(metric)
        for evaluation in sorted(evaluations, key=lambda e: e["step"]):
            if evaluation["metric"] == metric:
                best.observe(evaluation["step"], evaluation["value"])
        return best
