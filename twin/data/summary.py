"""What a person wants to know about a recording at a glance, and the simulated mouse's ceilings."""

from __future__ import annotations

import numpy as np

from twin import metrics
from twin.data.heldout import HeldOut, restore
from twin.data.recording import BEHAVIOR_NAMES, HELD_OUT_TIERS, Recording

__all__ = ["ceilings", "format_summary", "summarize"]


def _per_image_mean(values: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Each trial's row replaced by the mean over the trials of its image."""
    _, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    sums = np.zeros((counts.size, values.shape[1]))
    np.add.at(sums, inverse, values)
    return (sums / counts[:, None])[inverse]


def _repeat_stats(responses: np.ndarray, image_ids: np.ndarray) -> dict:
    fev = metrics.fev(responses, image_ids, per_neuron=True)
    return {
        "fev_median": float(np.median(fev)),
        "fev_quartiles": [float(q) for q in np.quantile(fev, [0.25, 0.5, 0.75])],
        "fev_fraction_ge_0.15": float(np.mean(fev >= 0.15)),
        "oracle_correlation": metrics.oracle_correlation(responses, image_ids),
    }


def ceilings(recording: Recording, true_responses: np.ndarray, expected: np.ndarray) -> dict:
    """Per repeated tier: FEV distribution, jackknife oracle, and the ground truth scored as a model.

    `with_behavior` scores each trial's expected response (which knows behaviour and eye position);
    `image_only` scores the expected response averaged over an image's repeats, the best a model
    without behaviour can approach.
    """
    out = {}
    for tier in ("test", "final_test"):
        idx = recording.tier_indices(tier)
        if idx.size == 0:
            continue
        r, ids = true_responses[idx], recording.image_ids[idx]
        mu = np.asarray(expected[idx], dtype=np.float64)
        entry = _repeat_stats(r, ids)
        for name, prediction in (("with_behavior", mu), ("image_only", _per_image_mean(mu, ids))):
            scores = metrics.score(r, prediction, ids)
            entry[name] = {
                "single_trial_correlation": scores.single_trial_correlation,
                "correlation_to_average": scores.correlation_to_average,
                "feve": scores.feve,
            }
        out[tier] = entry
    return out


def _ranges(values: np.ndarray, names: tuple[str, ...]) -> dict:
    if not np.any(values):
        return {"zeroed": True}
    return {
        name: {
            "min": float(values[:, i].min()),
            "max": float(values[:, i].max()),
            "mean": float(values[:, i].mean()),
        }
        for i, name in enumerate(names)
    }


def summarize(recording: Recording, held_out: HeldOut | None = None) -> dict:
    """A JSON-able summary: tiers, repeats, neurons, behaviour ranges, test-tier reliability."""
    responses = restore(recording, held_out) if held_out is not None else recording.responses
    tiers = {}
    for tier, count in recording.tier_counts().items():
        ids = recording.image_ids[recording.tier_indices(tier)]
        _, repeats = np.unique(ids, return_counts=True)
        entry = {
            "trials": count,
            "images": int(repeats.size),
            "repeats": [int(repeats.min()), float(np.median(repeats)), int(repeats.max())],
            "responses_zeroed_on_disk": recording.responses_zeroed(tier),
        }
        idx = recording.tier_indices(tier)
        if repeats.max() >= 2 and np.any(responses[idx]):
            entry.update(_repeat_stats(np.asarray(responses[idx]), ids))
            entry["from_held_out"] = bool(held_out is not None and tier in HELD_OUT_TIERS)
        tiers[tier] = entry
    return {
        "data_key": recording.data_key,
        "source": recording.source,
        "neurons": recording.n_neurons,
        "trials": recording.n_trials,
        "image_shape": list(recording.image_shape),
        "image_dtype": str(recording.images.dtype),
        "tiers": tiers,
        "behavior": _ranges(np.asarray(recording.behavior), BEHAVIOR_NAMES),
        "pupil_center": _ranges(np.asarray(recording.pupil_center), ("horizontal", "vertical")),
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"recording {summary['data_key']}  ({summary['source']})",
        f"  {summary['trials']} trials, {summary['neurons']} neurons, images {summary['image_shape'][0]}x"
        f"{summary['image_shape'][1]} {summary['image_dtype']}",
        f"  {'tier':<11} {'trials':>6} {'images':>6} {'repeats(min/med/max)':>21} {'FEV>=.15':>9} "
        f"{'FEV q1/med/q3':>16} {'oracle':>7}",
    ]
    for tier, t in summary["tiers"].items():
        rep = "{}/{:g}/{}".format(*t["repeats"])
        if "oracle_correlation" in t:
            quartiles = "{:.2f}/{:.2f}/{:.2f}".format(*t["fev_quartiles"])
            rel = f"{t['fev_fraction_ge_0.15']:>9.2f} {quartiles:>16} {t['oracle_correlation']:>7.3f}"
            if t.get("from_held_out"):
                rel += "  (held-out responses)"
        elif t["responses_zeroed_on_disk"]:
            rel = "  responses held out (zeroed on disk)"
        else:
            rel = ""
        lines.append(f"  {tier:<11} {t['trials']:>6} {t['images']:>6} {rep:>21} {rel}")
    for key in ("behavior", "pupil_center"):
        ranges = summary[key]
        if ranges.get("zeroed"):
            lines.append(f"  {key}: zeroed (image-only track)")
            continue
        parts = [f"{n} {v['min']:.3g}..{v['max']:.3g} (mean {v['mean']:.3g})" for n, v in ranges.items()]
        lines.append(f"  {key}: " + "; ".join(parts))
    return "\n".join(lines)
