"""Ensembles: greedy member selection on validation, and the mean and spread of the members' predictions.

Selection is Caruana-style forward selection without replacement: start from the best member and keep
adding the member that most raises the ensemble's validation correlation, until none does.
"""

from __future__ import annotations

import numpy as np

from twin import metrics

__all__ = ["greedy_select", "mean_and_spread", "pooled_correlation"]


def pooled_correlation(responses: dict[str, np.ndarray], predictions: dict[str, np.ndarray]) -> float:
    """Mean over all neurons of all recordings of the per-neuron correlation (the trainer's objective)."""
    return float(
        np.mean(np.concatenate([metrics.correlation(responses[k], predictions[k]) for k in responses]))
    )


def greedy_select(
    members: list[dict[str, np.ndarray]], responses: dict[str, np.ndarray]
) -> tuple[list[int], list[float]]:
    """Indices of the selected members (in the order chosen) and the ensemble score after each addition."""
    if not members:
        raise ValueError("greedy_select needs at least one member")
    chosen: list[int] = []
    scores: list[float] = []
    total = {k: np.zeros_like(v, dtype=np.float64) for k, v in responses.items()}
    remaining = list(range(len(members)))
    while remaining:
        trial = []
        for i in remaining:
            ensemble = {k: (total[k] + members[i][k]) / (len(chosen) + 1) for k in responses}
            trial.append((pooled_correlation(responses, ensemble), i))
        best_score, best = max(trial)
        if scores and best_score <= scores[-1]:
            break
        chosen.append(best)
        scores.append(best_score)
        remaining.remove(best)
        for k in responses:
            total[k] += members[best][k]
    return chosen, scores


def mean_and_spread(predictions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and the standard deviation across members (0 for a single member), per entry."""
    stacked = np.stack(predictions)  # (M, trials, neurons)
    return stacked.mean(0), stacked.std(0)
