"""Tests of twin.metrics: hand-computed answers, a slow loop reference, properties and every error path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from twin import metrics
from twin.errors import InvalidInput
from twin.metrics import (
    Scores,
    correlation,
    correlation_to_average,
    fev,
    feve,
    oracle_correlation,
    repeat_variances,
    score,
    single_trial_correlation,
)

FAST = settings(max_examples=50, deadline=None)


# ---------------------------------------------------------------------------------------------------
# Known answers, worked out by hand from the formulas of SENSORIUM.md §3

# 2 images x 2 repeats x 2 neurons.
IDS = np.array([0, 0, 1, 1])
R = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 4.0], [7.0, 4.0]])  # (trials, neurons)
P = np.array([[2.0, 3.0], [2.0, 3.0], [6.0, 3.0], [6.0, 3.0]])
# neuron 0: image means 2, 6; per-image ddof=1 variances 2, 2 -> s2_n = 2; overall mean 4,
#   squared deviations 9+1+1+9 = 20 -> s2_t = 20/3; FEV = (20/3 - 2)/(20/3) = 0.7.
#   prediction = image means -> MSE = 1; FEVE = 1 - (1 - 2)/(20/3 - 2) = 1 + 3/14 = 17/14.
#   leave-one-out means [3, 1, 7, 5]; deviations [-3,-1,1,3] x [-1,-3,3,1] -> cov 3, var 5, 5 -> 0.6.
#   single trial: deviations [-3,-1,1,3] x [-2,-2,2,2] -> cov 4, sd sqrt(5) and 2 -> 2/sqrt(5).
#   image averages: [2, 6] vs [2, 6] -> 1.
# neuron 1: noise-free repeats -> s2_n = 0, s2_t = 4/3, FEV = 1; prediction 3 (the mean):
#   MSE = 1 -> FEVE = 1 - 1/(4/3) = 1/4; oracle: leave-one-out means equal the data -> 1;
#   constant prediction -> correlations 0 (the 1e-8 keeps them defined).
KNOWN = {
    "fev": [0.7, 1.0],
    "feve": [17 / 14, 0.25],
    "oracle": [0.6, 1.0],
    "single": [2 / np.sqrt(5), 0.0],
    "average": [1.0, 0.0],
}


def test_correlation_known_answer():
    # deviations [-1.5,-.5,.5,1.5] x [-1.5,.5,-.5,1.5] -> cov 1; both variances 1.25 -> 0.8
    rho = correlation([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert rho.shape == ()
    assert float(rho) == pytest.approx(0.8, rel=1e-7)


def test_scores_do_not_depend_on_memory_layout():
    """C- or Fortran-ordered, float32 or float64: the same values give bit-identical scores."""
    rng = np.random.default_rng(3)
    responses = rng.gamma(1.0, 1.0, (60, 300)).astype(np.float32)
    predictions = responses + rng.normal(size=responses.shape).astype(np.float32)
    images = np.repeat(np.arange(6), 10)
    variants = [predictions, np.asfortranarray(predictions), predictions.astype(np.float64)]
    expected = metrics.correlation(responses, predictions)
    for layout in variants[1:]:
        assert np.array_equal(metrics.correlation(responses, layout), expected)
        assert metrics.score(responses, layout, images) == metrics.score(responses, predictions, images)


def test_correlation_along_other_axis():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    b = np.array([[1.0, 3.0, 2.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_allclose(correlation(a, b, axis=1), [0.8, -1.0], rtol=1e-7)
    np.testing.assert_allclose(correlation(a.T, b.T, axis=-2), [0.8, -1.0], rtol=1e-7)


def test_known_answers_per_neuron():
    np.testing.assert_allclose(fev(R, IDS, per_neuron=True), KNOWN["fev"], rtol=1e-12)
    np.testing.assert_allclose(feve(R, P, IDS, per_neuron=True), KNOWN["feve"], rtol=1e-12)
    np.testing.assert_allclose(oracle_correlation(R, IDS, per_neuron=True), KNOWN["oracle"], rtol=1e-6)
    np.testing.assert_allclose(single_trial_correlation(R, P, per_neuron=True), KNOWN["single"], rtol=1e-6)
    np.testing.assert_allclose(
        correlation_to_average(R, P, IDS, per_neuron=True), KNOWN["average"], atol=1e-6
    )


def test_repeat_variances_known_answer():
    s2_n, s2_t = repeat_variances(R, IDS)  # neuron 0: 2 and 20/3; neuron 1: 0 and 4/3 (see above)
    np.testing.assert_allclose(s2_n, [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(s2_t, [20 / 3, 4 / 3], rtol=1e-12)
    with pytest.raises(InvalidInput, match=r"^image_ids: "):
        repeat_variances(R, np.arange(4))


def test_known_answers_means():
    assert fev(R, IDS) == pytest.approx(0.85)
    assert feve(R, P, IDS) == pytest.approx((17 / 14 + 0.25) / 2)
    assert oracle_correlation(R, IDS) == pytest.approx(0.8, rel=1e-6)
    assert single_trial_correlation(R, P) == pytest.approx(1 / np.sqrt(5), rel=1e-6)
    assert correlation_to_average(R, P, IDS) == pytest.approx(0.5, rel=1e-6)


def test_feve_threshold_excludes_neurons():
    # neuron 0 has FEV 0.7: with threshold 0.8 only neuron 1 counts
    assert feve(R, P, IDS, threshold=0.8) == pytest.approx(0.25)
    np.testing.assert_array_equal(np.isnan(feve(R, P, IDS, threshold=0.8, per_neuron=True)), [True, False])


def test_singleton_images_are_ignored_by_repeat_metrics():
    # a third image shown once changes nothing for FEV, FEVE or the oracle (they use repeated images only)
    r = np.vstack([R, [[100.0, -50.0]]])
    p = np.vstack([P, [[0.0, 0.0]]])
    ids = np.append(IDS, 7)
    np.testing.assert_allclose(fev(r, ids, per_neuron=True), KNOWN["fev"], rtol=1e-12)
    np.testing.assert_allclose(feve(r, p, ids, per_neuron=True), KNOWN["feve"], rtol=1e-12)
    np.testing.assert_allclose(oracle_correlation(r, ids, per_neuron=True), KNOWN["oracle"], rtol=1e-6)


def test_image_ids_need_not_be_sorted_or_integers():
    order = np.array([2, 0, 3, 1])
    ids = np.where(IDS[order] == 0, "img-a", "img-b")  # any sortable ids, trials in any order
    np.testing.assert_allclose(fev(R[order], ids, per_neuron=True), KNOWN["fev"], rtol=1e-12)
    np.testing.assert_allclose(feve(R[order], P[order], ids, per_neuron=True), KNOWN["feve"], rtol=1e-12)
    np.testing.assert_allclose(oracle_correlation(R[order], ids, per_neuron=True), KNOWN["oracle"], rtol=1e-6)
    np.testing.assert_allclose(
        correlation_to_average(R[order], P[order], ids, per_neuron=True), KNOWN["average"], atol=1e-6
    )


def test_one_dimensional_inputs_are_one_neuron():
    assert fev(R[:, 0], IDS) == pytest.approx(0.7)
    assert single_trial_correlation(R[:, 0], P[:, 0]) == pytest.approx(2 / np.sqrt(5), rel=1e-6)
    assert feve(R[:, 0], P[:, 0], IDS, per_neuron=True).shape == (1,)


# ---------------------------------------------------------------------------------------------------
# A slow, independent reference: plain loops over images and neurons


def _ref_corr(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    za = (a - a.mean()) / (a.std() + 1e-8)
    zb = (b - b.mean()) / (b.std() + 1e-8)
    return float(np.mean(za * zb))


def _ref_groups(ids):
    groups = {}
    for t, i in enumerate(ids):
        groups.setdefault(i, []).append(t)
    return list(groups.values())


def _reference(r, p, ids):
    """Per-neuron single, average, fev, feve, oracle computed image by image, neuron by neuron."""
    groups = _ref_groups(ids)
    repeated = [g for g in groups if len(g) >= 2]
    kept = [t for g in repeated for t in g]
    out = {k: [] for k in ("single", "average", "fev", "feve", "oracle")}
    for n in range(r.shape[1]):
        x, y = r[:, n], p[:, n]
        out["single"].append(_ref_corr(x, y))
        out["average"].append(_ref_corr([x[g].mean() for g in groups], [y[g].mean() for g in groups]))
        s2_n = np.mean([np.var(x[g], ddof=1) for g in repeated])
        s2_t = np.var(x[kept], ddof=1)
        mse = np.mean((x[kept] - y[kept]) ** 2)
        out["fev"].append((s2_t - s2_n) / s2_t)
        out["feve"].append(1 - (mse - s2_n) / (s2_t - s2_n))
        trials, loo = [], []
        for g in repeated:
            for t in g:
                trials.append(x[t])
                loo.append(np.mean([x[u] for u in g if u != t]))
        out["oracle"].append(_ref_corr(trials, loo))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 7, size=15)  # irregular repeats, singletons included
    counts[:2] = 3  # at least 2 repeated images
    ids = rng.permutation(np.repeat(rng.choice(10_000, size=len(counts), replace=False), counts))
    n_neurons = 6
    signal = rng.normal(size=(10_000, n_neurons))[ids] * rng.uniform(0.5, 2, n_neurons)
    r = (signal + rng.normal(size=signal.shape)).astype(np.float32)
    p = (signal + rng.normal(scale=0.5, size=signal.shape)).astype(np.float32)
    ref = _reference(r.astype(float), p.astype(float), ids)
    np.testing.assert_allclose(single_trial_correlation(r, p, per_neuron=True), ref["single"], atol=1e-10)
    np.testing.assert_allclose(correlation_to_average(r, p, ids, per_neuron=True), ref["average"], atol=1e-10)
    np.testing.assert_allclose(fev(r, ids, per_neuron=True), ref["fev"], rtol=1e-10)
    np.testing.assert_allclose(feve(r, p, ids, threshold=-np.inf, per_neuron=True), ref["feve"], rtol=1e-10)
    np.testing.assert_allclose(oracle_correlation(r, ids, per_neuron=True), ref["oracle"], atol=1e-10)


def test_blocks_of_neurons_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(20), 4)
    r = rng.normal(size=(80, 37)) + rng.normal(size=(20, 37))[ids]
    p = rng.normal(size=(80, 37))
    whole = score(r, p, ids, threshold=0.0).to_dict()
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 80 * 5)  # 5 neurons per block, 8 blocks
    assert score(r, p, ids, threshold=0.0).to_dict() == pytest.approx(whole, rel=1e-12)
    np.testing.assert_allclose(correlation(r, p), single_trial_correlation(r, p, per_neuron=True), rtol=1e-12)


def test_float32_memmap_input_is_read_not_written(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(10), 3)
    data = (rng.normal(size=(30, 4)) + rng.normal(size=(10, 4))[ids] * 2).astype(np.float32)
    path = tmp_path / "responses.npy"
    np.save(path, data)
    mm = np.load(path, mmap_mode="r")  # read-only: any write would raise
    p = np.zeros_like(data) + data.mean(axis=0)
    got = score(mm, p, ids).to_dict()
    want = score(data.astype(np.float64), p.astype(np.float64), ids).to_dict()
    assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_array_equal(np.load(path), data)


# ---------------------------------------------------------------------------------------------------
# Properties

shapes = st.tuples(st.integers(3, 40), st.integers(1, 4))


@FAST
@given(
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    a=st.floats(0.1, 100),
    b=st.floats(-1e3, 1e3),
    flip=st.booleans(),
)
def test_correlation_affine_invariance(shape, seed, a, b, flip):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=shape) * rng.uniform(0.5, 5)
    p = rng.normal(size=shape) + 0.5 * r  # sd >= ~1: the 1e-8 is negligible
    ids = np.arange(shape[0]) % 3
    avg = np.stack([p[ids == i].mean(axis=0) for i in range(3)])
    assume(p.std(axis=0).min() > 0.1 and avg.std(axis=0).min() > 0.1)  # keeps the 1e-8 below 1e-6
    sign = -1.0 if flip else 1.0
    base = single_trial_correlation(r, p, per_neuron=True)
    np.testing.assert_allclose(
        single_trial_correlation(r, sign * a * p + b, per_neuron=True), sign * base, atol=1e-5
    )
    base_avg = correlation_to_average(r, p, ids, per_neuron=True)
    np.testing.assert_allclose(
        correlation_to_average(r, sign * a * p + b, ids, per_neuron=True), sign * base_avg, atol=1e-5
    )


@FAST
@given(x=hnp.arrays(np.float64, st.integers(3, 50), elements=st.floats(-1e6, 1e6)))
def test_correlation_with_itself_is_one(x):
    assume(x.std() > 1e-3)
    assert float(correlation(x, x)) == pytest.approx(1.0, abs=1e-4)
    assert float(correlation(x, -x)) == pytest.approx(-1.0, abs=1e-4)


def _simulate(rng, n_images, repeats, n_neurons, signal_sd=1.0, noise_sd=1.0):
    ids = rng.permutation(np.repeat(np.arange(n_images), repeats))
    means = rng.normal(size=(n_images, n_neurons)) * signal_sd  # (images, neurons)
    r = means[ids] + rng.normal(size=(len(ids), n_neurons)) * noise_sd  # (trials, neurons)
    return r, means[ids], ids


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n_images=st.integers(20, 40),
    repeats=st.integers(2, 8),
    n_neurons=st.integers(1, 5),
)
def test_feve_of_constant_overall_mean_is_near_zero(seed, n_images, repeats, n_neurons):
    rng = np.random.default_rng(seed)
    r, _, ids = _simulate(rng, n_images, repeats, n_neurons, signal_sd=3.0)
    p = np.broadcast_to(r.mean(axis=0), r.shape)
    values = feve(r, p, ids, threshold=-np.inf, per_neuron=True)
    # MSE of the mean = s2_t (n-1)/n, so FEVE = 1/(n FEV) exactly: ~0 for many trials
    np.testing.assert_allclose(values, 1 / (len(ids) * fev(r, ids, per_neuron=True)), rtol=1e-9)
    assert np.all(np.abs(values) < 0.1)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_feve_of_the_generating_mean_is_near_one(seed):
    rng = np.random.default_rng(seed)
    r, truth, ids = _simulate(rng, 50, 40, 3)
    values = feve(r, truth, ids, per_neuron=True)
    np.testing.assert_allclose(values, 1.0, atol=0.05)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n_images=st.integers(2, 20), repeats=st.integers(2, 6))
def test_fev_of_noise_free_repeats_is_one(seed, n_images, repeats):
    rng = np.random.default_rng(seed)
    r, truth, ids = _simulate(rng, n_images, repeats, 3, noise_sd=0.0)
    assume(np.all(truth.std(axis=0) > 1e-6))
    np.testing.assert_allclose(fev(r, ids, per_neuron=True), 1.0, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_oracle_without_signal_is_near_zero_and_with_strong_signal_near_one(seed):
    rng = np.random.default_rng(seed)
    noise, _, ids = _simulate(rng, 200, 10, 4, signal_sd=0.0)
    # sd of the jackknife correlation without signal is sqrt(2 / trials) ~ 0.03: 0.2 is > 6 sd
    assert np.all(np.abs(oracle_correlation(noise, ids, per_neuron=True)) < 0.2)
    strong, _, ids = _simulate(rng, 100, 10, 4, signal_sd=10.0)
    assert np.all(oracle_correlation(strong, ids, per_neuron=True) > 0.95)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n_neurons=st.integers(1, 6))
def test_per_neuron_shapes_and_means(seed, n_neurons):
    rng = np.random.default_rng(seed)
    r, truth, ids = _simulate(rng, 8, 3, n_neurons, signal_sd=2.0)
    p = truth + rng.normal(size=truth.shape)
    for fn, args in (
        (single_trial_correlation, (r, p)),
        (correlation_to_average, (r, p, ids)),
        (fev, (r, ids)),
        (feve, (r, p, ids, -np.inf)),
        (oracle_correlation, (r, ids)),
    ):
        values = fn(*args, per_neuron=True)
        assert values.shape == (n_neurons,)
        assert values.dtype == np.float64
        mean = fn(*args)
        assert isinstance(mean, float)
        assert mean == pytest.approx(np.nanmean(values), rel=1e-12, abs=1e-15)


def test_feve_per_neuron_is_full_width_with_nan_below_threshold():
    rng = np.random.default_rng(4)
    r, truth, ids = _simulate(rng, 20, 5, 4, signal_sd=3.0)
    r[:, 1] = rng.normal(size=len(ids))  # pure noise: FEV ~ 0
    values = feve(r, truth, ids, per_neuron=True)
    assert values.shape == (4,)
    assert np.isnan(values[1]) and not np.isnan(values[[0, 2, 3]]).any()
    assert feve(r, truth, ids) == pytest.approx(np.nanmean(values))


# ---------------------------------------------------------------------------------------------------
# score()


def test_score_matches_the_individual_metrics():
    rng = np.random.default_rng(5)
    r, truth, ids = _simulate(rng, 30, 4, 5, signal_sd=2.0)
    r = np.vstack([r, rng.normal(size=(3, 5))])  # plus 3 singleton images
    ids = np.append(ids, [100, 101, 102])
    p = np.vstack([truth, np.zeros((3, 5))]) + rng.normal(size=r.shape)
    s = score(r, p, ids)
    assert isinstance(s, Scores)
    assert s.single_trial_correlation == pytest.approx(single_trial_correlation(r, p), rel=1e-12)
    assert s.correlation_to_average == pytest.approx(correlation_to_average(r, p, ids), rel=1e-12)
    assert s.feve == pytest.approx(feve(r, p, ids), rel=1e-12)
    assert s.oracle_correlation == pytest.approx(oracle_correlation(r, ids), rel=1e-12)
    assert s.fev_fraction_above_threshold == pytest.approx(np.mean(fev(r, ids, per_neuron=True) >= 0.15))
    assert (s.n_neurons, s.n_trials, s.n_images) == (5, 123, 33)
    d = s.to_dict()
    assert set(d) == {
        "single_trial_correlation",
        "correlation_to_average",
        "feve",
        "fev_fraction_above_threshold",
        "oracle_correlation",
        "n_neurons",
        "n_trials",
        "n_images",
    }
    assert d["feve"] == s.feve


def test_score_without_repeats_leaves_repeat_metrics_none():
    rng = np.random.default_rng(6)
    r, p = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    s = score(r, p, np.arange(50))
    assert s.feve is None and s.oracle_correlation is None and s.fev_fraction_above_threshold is None
    assert s.correlation_to_average == pytest.approx(s.single_trial_correlation)
    assert s.n_images == 50


def test_score_with_nothing_above_threshold_has_no_feve():
    s = score(R, P, IDS, threshold=2.0)
    assert s.feve is None
    assert s.fev_fraction_above_threshold == 0.0
    assert s.oracle_correlation == pytest.approx(0.8, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# NaN handling


def test_nan_predictions_give_zero_correlation_with_a_warning():
    p = P.copy()
    p[0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 2 neurons"):
        values = single_trial_correlation(R, p, per_neuron=True)
    assert values[0] == 0.0
    with pytest.warns(RuntimeWarning, match="correlation_to_average"):
        assert correlation_to_average(R, p, IDS, per_neuron=True)[0] == 0.0
    with pytest.warns(RuntimeWarning, match="correlation"):
        assert float(correlation(R[:, 0], p[:, 0])) == 0.0


def test_nan_responses_give_zero_oracle_with_a_warning():
    r = R.copy()
    r[1, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="oracle_correlation"):
        np.testing.assert_allclose(oracle_correlation(r, IDS, per_neuron=True), [0.6, 0.0], rtol=1e-6)


def test_nan_predictions_are_left_out_of_the_feve_mean_with_a_warning():
    p = P.copy()
    p[2, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="feve: 1 of 2"):
        assert feve(R, p, IDS) == pytest.approx(17 / 14)
    with pytest.warns(RuntimeWarning) as record:  # the correlations warn too
        assert score(R, p, IDS).feve == pytest.approx(17 / 14)
    assert any(str(w.message).startswith("feve: 1 of 2") for w in record)


def test_clean_inputs_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score(R, P, IDS)
        fev(R, IDS)


# ---------------------------------------------------------------------------------------------------
# Errors: each names the argument


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: single_trial_correlation(np.zeros((4, 2, 1)), np.zeros((4, 2, 1))), "responses"),
        (lambda: single_trial_correlation(np.float64(1.0), np.float64(1.0)), "responses"),
        (lambda: single_trial_correlation(R, np.zeros((4, 2, 1))), "predictions"),
        (lambda: single_trial_correlation(R, P[:, :1]), "predictions"),
        (lambda: single_trial_correlation(R[:1], P[:1]), "responses"),
        (lambda: single_trial_correlation(np.zeros((4, 0)), np.zeros((4, 0))), "responses"),
        (lambda: single_trial_correlation(np.array(["a", "b"]), np.zeros(2)), "responses"),
        (lambda: correlation_to_average(R, P, IDS[:3]), "image_ids"),
        (lambda: correlation_to_average(R, P, IDS[:, None]), "image_ids"),
        (lambda: correlation_to_average(R, P, np.zeros(4)), "image_ids"),
        (lambda: fev(R, IDS[:3]), "image_ids"),
        (lambda: fev(np.zeros((2, 2, 2)), IDS), "responses"),
        (lambda: feve(R, P[:3], IDS), "predictions"),
        (lambda: feve(R, P, IDS, threshold=float("nan")), "threshold"),
        (lambda: oracle_correlation(R, np.arange(5)), "image_ids"),
        (lambda: score(R, P, [0, 0, 0, 0]), "image_ids"),
        (lambda: correlation(R, P[:3]), "b"),
        (lambda: correlation(R, P, axis=2), "axis"),
        (lambda: correlation(np.array([1.0]), np.array([2.0])), "a"),
        (lambda: correlation(np.array([None, None]), np.zeros(2)), "a"),
    ],
)
def test_invalid_input_names_the_field(call, field):
    with pytest.raises(InvalidInput, match=rf"^{field}: "):
        call()


@pytest.mark.parametrize("fn", [fev, oracle_correlation, lambda r, ids: feve(r, r, ids)])
def test_repeat_metrics_need_repeats(fn):
    with pytest.raises(
        InvalidInput, match=r"image_ids: 500 trials of 500 distinct images; .* at least twice"
    ):
        fn(np.random.default_rng(0).normal(size=(500, 2)), np.arange(500))
    with pytest.raises(InvalidInput, match=r"image_ids: .*only 1 shown at least twice"):
        fn(R, np.array([0, 0, 1, 2]))


def test_correlation_to_average_works_without_repeats():
    rng = np.random.default_rng(7)
    r, p = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    ids = rng.permutation(20)
    np.testing.assert_allclose(
        correlation_to_average(r, p, ids, per_neuron=True), single_trial_correlation(r, p, per_neuron=True)
    )


def test_feve_nothing_above_threshold_names_threshold_and_best_fev():
    with pytest.raises(InvalidInput, match=r"threshold: 2\.0; .*best FEV 1 "):
        feve(R, P, IDS, threshold=2.0)
    with pytest.raises(InvalidInput, match="threshold"):
        feve(R, P, IDS, threshold=2.0, per_neuron=True)


def test_invalid_input_is_a_value_error():
    with pytest.raises(ValueError, match="responses"):
        fev(np.zeros((2, 2, 2)), IDS)


def test_public_surface():
    assert set(metrics.__all__) == {
        "Scores",
        "correlation",
        "correlation_to_average",
        "fev",
        "feve",
        "oracle_correlation",
        "repeat_variances",
        "score",
        "single_trial_correlation",
    }
    for name in metrics.__all__:
        assert hasattr(metrics, name)
