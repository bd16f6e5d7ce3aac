"""Scoring translations of a prepared split: sacreBLEU, and the paper's analyses."""
