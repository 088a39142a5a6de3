"""The benchmarks' reference side: neuralpredictors 0.3.0 imports through the shim and trains one step.

Skipped where the optional `bench` extra (neuralpredictors, scikit-image) is not installed.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="scikit-image: optional bench extra (pip install -e '.[bench]')")
try:
    from bench.reference import (
        build_reference_model,
        import_neuralpredictors,
        reference_loaders,
        reference_validation_correlation,
        train_reference,
    )

    import_neuralpredictors()
except ImportError as exc:  # the optional extra is missing
    pytest.skip(f"neuralpredictors: not importable ({exc}); optional bench extra", allow_module_level=True)


def test_shim_leaves_no_torchvision_stub_behind():
    import_neuralpredictors()
    from neuralpredictors.layers.cores import Stacked2dCore  # noqa: F401 - imported torchvision

    module = sys.modules.get("torchvision")
    assert module is None or not (module.__doc__ or "").startswith("Stub")


def test_reference_model_on_tiny(tiny_sim, tmp_path):
    folders = sorted(tiny_sim.glob("static*"))
    before = {p: sorted(q.name for q in p.iterdir()) for p in folders}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # neuralpredictors' deprecation notes
        loaders = reference_loaders(folders, batch_size=8, workdir=tmp_path)
        model = build_reference_model(loaders, seed=0)
    # The dataset wrote its config.json into the copies only.
    assert {p: sorted(q.name for q in p.iterdir()) for p in folders} == before
    assert all((tmp_path / p.name / "config.json").is_file() for p in folders)

    key = next(iter(loaders["train"]))
    batch = next(iter(loaders["train"][key]))
    assert batch.images.shape == (8, 1, 36, 64)  # (B, C, H, W)
    assert batch.responses.shape == (8, 150)
    # The SENSORIUM 2022 baseline: 64 channels, 9x9 unpadded input conv, 3 depth-separable 7x7 layers.
    assert model.core.features[0].conv.weight.shape == (64, 1, 9, 9)
    assert len(model.core.features) == 4
    assert model.readout[key].in_shape == (64, 28, 56)

    out = model(batch.images, data_key=key)
    assert out.shape == (8, 150) and torch.all(out > 0)  # ELU + 1
    loss = (out - batch.responses * torch.log(out + 1e-12)).sum() + model.regularizer(data_key=key)
    loss.backward()
    assert model.core.features[0].conv.weight.grad.abs().sum() > 0

    durations = train_reference(model, loaders, steps=1)
    assert len(durations) == 1
    assert np.isfinite(reference_validation_correlation(model, loaders))


def test_reference_early_stopping_restores_the_best_weights(tiny_sim, tmp_path):
    from bench.reference import train_early_stopped

    folders = sorted(tiny_sim.glob("static*"))[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaders = reference_loaders(folders, batch_size=64, workdir=tmp_path)
        model = build_reference_model(loaders, seed=0, hidden_channels=8, layers=2)
        outcome = train_early_stopped(model, loaders, max_epochs=3, patience=1, lr_decay_steps=2)
    curve = outcome["validation_curve"]
    assert 1 <= outcome["epochs"] <= 3 and len(curve) == outcome["epochs"]
    # Every epoch's objective was seen by early stopping; the weights it kept are at least as good.
    assert outcome["validation_correlation"] >= max(curve) - 1e-6
    assert outcome["validation_correlation"] > curve[0] + 0.02  # it learned from its random start


def test_materialized_loaders_give_the_same_batches(tiny_sim, tmp_path):
    folders = sorted(tiny_sim.glob("static*"))[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = reference_loaders(folders, batch_size=16, workdir=tmp_path / "a", tiers=("validation",))
        kept = reference_loaders(
            folders, batch_size=16, workdir=tmp_path / "b", tiers=("validation",), materialize=True
        )
    a, b = next(iter(plain["validation"].values())), next(iter(kept["validation"].values()))
    assert len(a.dataset) == len(b.dataset) and b.dataset.neurons.unit_ids is not None
    for x, y in zip(a, b, strict=True):
        assert x._fields == y._fields
        for u, v in zip(x, y, strict=True):
            torch.testing.assert_close(u, v)
