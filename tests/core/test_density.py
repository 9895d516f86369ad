"""Tests for ``napari_cell_anomaly.core.density``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.neighbors import KernelDensity

from napari_cell_anomaly.core.density import (
    BANDWIDTH_GRID,
    LOCAL_BANDWIDTH_GRID,
    SCALE_FLOOR_ULPS,
    LatentDensity,
    LocalLatentDensity,
    LocalLatentKDE,
    density_from_arrays,
    fit_density,
    scale_floor,
)


def _codes(n: int, seed: int, dim: int = 24, rank: int = 6) -> np.ndarray:
    """Latent-like codes: a low-rank structure plus noise, with very different column scales."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).normal(size=(rank, dim))
    col_scale = np.geomspace(0.01, 100.0, dim)
    return (rng.normal(size=(n, rank)) @ basis + 0.1 * rng.normal(size=(n, dim))) * col_scale


@pytest.fixture(scope="module")
def fitted() -> LatentDensity:
    return LatentDensity.fit(_codes(150, seed=0), n_components=8, seed=0)


def test_fit_shapes_and_bandwidth(fitted: LatentDensity) -> None:
    assert fitted.points.shape == (150, 8)
    assert fitted.components.shape == (8, 24)
    assert fitted.mean.shape == fitted.scale.shape == fitted.pca_mean.shape == (24,)
    assert fitted.bandwidth in BANDWIDTH_GRID
    # Reduced training codes are white: zero mean, unit variance, uncorrelated.
    cov = np.cov(fitted.points, rowvar=False, ddof=1)
    np.testing.assert_allclose(fitted.points.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(cov, np.eye(8), atol=1e-6)
    np.testing.assert_allclose(fitted.reduce(_codes(150, seed=0)), fitted.points, atol=1e-9)


def test_log_density_higher_near_training_data(fitted: LatentDensity) -> None:
    near = _codes(50, seed=1)  # new samples from the training distribution
    far = near + 5.0 * np.abs(near).mean(0)  # shifted well away in every coordinate
    ld_near, ld_far = fitted.log_density(near), fitted.log_density(far)
    assert ld_near.shape == ld_far.shape == (50,)
    assert np.all(np.isfinite(ld_near)) and np.all(np.isfinite(ld_far))
    assert ld_near.min() > ld_far.max()
    # The density decreases monotonically along a ray leaving the data.
    direction = np.abs(near).mean(0)
    ray = np.stack([near[0] + t * direction for t in (0.0, 2.0, 4.0, 8.0)])
    assert np.all(np.diff(fitted.log_density(ray)) < 0)


def test_log_density_matches_sklearn_kernel_density(fitted: LatentDensity) -> None:
    queries = _codes(60, seed=2)  # training-like queries
    kde = KernelDensity(kernel="gaussian", bandwidth=fitted.bandwidth).fit(fitted.points)
    expected = kde.score_samples(fitted.reduce(queries))
    np.testing.assert_allclose(fitted.log_density(queries), expected, rtol=1e-9, atol=1e-9)


def test_log_density_matches_brute_force_far_from_the_data(fitted: LatentDensity) -> None:
    # sklearn's tree-based KDE loses accuracy (errors of several nats) for queries far from
    # every kernel centre (scikit-learn issue #7492), so far points are checked against a
    # direct float64 sum instead.
    queries = np.concatenate([_codes(20, seed=3), _codes(20, seed=4) * 3.0])
    q = fitted.reduce(queries)
    h, (n, k) = fitted.bandwidth, fitted.points.shape
    d2 = ((q[:, None, :] - fitted.points[None, :, :]) ** 2).sum(-1)
    expected = logsumexp(-0.5 * d2 / h**2, axis=1) - np.log(n) - 0.5 * k * np.log(2 * np.pi * h**2)
    assert expected.min() < -60.0  # really far out for some queries
    np.testing.assert_allclose(fitted.log_density(queries), expected, rtol=1e-9, atol=1e-9)


def test_bandwidth_is_the_cross_validated_choice() -> None:
    # A broad, smooth distribution wants a wider kernel than a tight clustered one.
    rng = np.random.default_rng(4)
    smooth = rng.normal(size=(200, 3))
    centers = rng.normal(size=(8, 3)) * 8.0
    clustered = centers[rng.integers(0, 8, 200)] + 0.05 * rng.normal(size=(200, 3))
    h_smooth = LatentDensity.fit(smooth, n_components=3).bandwidth
    h_clustered = LatentDensity.fit(clustered, n_components=3).bandwidth
    assert h_clustered < h_smooth


def test_arrays_round_trip_exact(fitted: LatentDensity) -> None:
    arrays = fitted.to_arrays()
    assert all(k.startswith("density.") for k in arrays)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    back = LatentDensity.from_arrays(arrays)
    for name in ("mean", "scale", "components", "pca_mean", "points"):
        assert np.array_equal(getattr(back, name), getattr(fitted, name))
    assert back.bandwidth == fitted.bandwidth
    queries = _codes(20, seed=5)
    assert np.array_equal(back.log_density(queries), fitted.log_density(queries))
    # A model file stores C-order copies; scores must stay bit-identical, also one at a time.
    copied = LatentDensity.from_arrays({k: np.array(v, order="C") for k, v in arrays.items()})
    for q in queries:
        assert np.array_equal(copied.log_density(q[None]), fitted.log_density(q[None]))
    other = LatentDensity.from_arrays(fitted.to_arrays(prefix="x/"), prefix="x/")
    assert np.array_equal(other.points, fitted.points)


def test_constant_columns_and_tiny_sets_are_handled() -> None:
    codes = _codes(30, seed=6)
    codes[:, 3] = 7.0  # a dead latent unit
    d = LatentDensity.fit(codes, n_components=16)
    assert d.scale[3] == scale_floor(codes) > 0.0
    zeros = LatentDensity.fit(np.zeros((5, 3)))  # no magnitude at all: left unscaled
    np.testing.assert_array_equal(zeros.scale, 1.0)
    assert np.all(np.isfinite(d.log_density(codes)))
    # Two codes: components capped at N - 1 = 1.
    d2 = LatentDensity.fit(_codes(2, seed=7))
    assert d2.points.shape == (2, 1)
    assert np.all(np.isfinite(d2.log_density(_codes(3, seed=8))))


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros(5), np.zeros((2, 2, 2))])
def test_fit_rejects_too_few_or_misshaped_codes(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="at least 2 latent codes"):
        LatentDensity.fit(bad)


# -------------------------------------------------------------------------------------------
# LocalLatentDensity: a mixture over the code vectors of single latent positions
# -------------------------------------------------------------------------------------------


def _code_maps(n: int, seed: int, channels: int = 4, side: int = 4) -> np.ndarray:
    """Flattened channel-major code maps ``(n, C * side * side)`` from two vector clusters."""
    rng = np.random.default_rng(seed)
    centers = np.array([[2.0, 0.0, -1.0, 0.5], [-2.0, 1.0, 1.0, -0.5]])[:, :channels]
    pick = rng.integers(0, 2, (n, side * side))
    vectors = centers[pick] + 0.2 * rng.normal(size=(n, side * side, channels))
    return vectors.transpose(0, 2, 1).reshape(n, -1)  # (n, C, P) -> channel-major


@pytest.fixture(scope="module")
def local() -> LocalLatentDensity:
    return LocalLatentDensity.fit(_code_maps(200, seed=0), channels=4, seed=0)


def test_local_density_flags_the_one_unusual_position(local: LocalLatentDensity) -> None:
    normal = _code_maps(20, seed=1)
    odd = normal.copy().reshape(20, 4, 16)
    odd[:, :, 5] = [0.0, -3.0, 4.0, 2.0]  # one position far from both clusters
    odd = odd.reshape(20, -1)
    per_pos = local.position_log_density(odd)
    assert per_pos.shape == (20, 16)
    assert np.all(per_pos.argmin(axis=1) == 5)
    # An image's log-density is that of its least likely position.
    np.testing.assert_allclose(local.log_density(odd), per_pos.min(axis=1))
    assert local.log_density(normal).min() > local.log_density(odd).max()


def test_local_density_matches_sklearn_mixture_scoring(local: LocalLatentDensity) -> None:
    from sklearn.mixture import GaussianMixture

    vectors = _code_maps(5, seed=2).reshape(5, 4, 16).transpose(0, 2, 1).reshape(-1, 4)
    gmm = GaussianMixture(len(local.weights), covariance_type="full")
    gmm.weights_, gmm.means_ = local.weights, local.means
    gmm.precisions_cholesky_ = local.precisions_chol
    expected = gmm.score_samples((vectors - local.mean) / local.scale).reshape(5, 16)
    np.testing.assert_allclose(local.position_log_density(_code_maps(5, seed=2)), expected,
                               rtol=1e-10, atol=1e-10)


def test_local_density_arrays_round_trip_exact(local: LocalLatentDensity) -> None:
    arrays = local.to_arrays()
    copied = {k: np.array(v, order="C") for k, v in arrays.items()}
    for back in (LocalLatentDensity.from_arrays(arrays), density_from_arrays("gmm", copied)):
        assert isinstance(back, LocalLatentDensity) and back.channels == 4
        for q in _code_maps(10, seed=3):
            assert np.array_equal(back.log_density(q[None]), local.log_density(q[None]))
    assert isinstance(density_from_arrays("kde-flat", LatentDensity.fit(
        _codes(30, seed=9)).to_arrays()), LatentDensity)


def test_fit_density_dispatches_and_validates() -> None:
    maps = _code_maps(40, seed=4)
    assert isinstance(fit_density("gmm", maps, channels=4), LocalLatentDensity)
    assert isinstance(fit_density("kde", maps, channels=4), LocalLatentKDE)
    assert isinstance(fit_density("kde-flat", maps, channels=4), LatentDensity)
    for bad in ("local", "bogus"):  # "local" is only an old file's name, mapped on loading
        with pytest.raises(ValueError, match="unknown density"):
            fit_density(bad, maps, channels=4)
        with pytest.raises(ValueError, match="unknown density"):
            density_from_arrays(bad, {})
    with pytest.raises(ValueError, match="4-channel"):
        LocalLatentDensity.fit(maps[:, :-1], channels=4)
    with pytest.raises(ValueError, match="4-channel"):
        LocalLatentKDE.fit(maps[:, :-1], channels=4)


# -------------------------------------------------------------------------------------------
# LocalLatentKDE: a kernel density estimate over the code vectors of single latent positions
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_kde() -> LocalLatentKDE:
    return LocalLatentKDE.fit(_code_maps(200, seed=0), channels=4, n_centres=300, seed=0)


def _as_vectors(maps: np.ndarray, channels: int = 4) -> np.ndarray:
    n = maps.shape[0]
    return maps.reshape(n, channels, -1).transpose(0, 2, 1).reshape(-1, channels)


def test_kde_scores_unusual_codes_lower_than_typical_ones(local_kde: LocalLatentKDE) -> None:
    normal = _code_maps(20, seed=1)  # new samples from the training distribution
    odd = normal.copy().reshape(20, 4, 16)
    odd[:, :, 5] = [0.0, -3.0, 4.0, 2.0]  # one position far from both clusters
    odd = odd.reshape(20, -1)
    per_pos = local_kde.position_log_density(odd)
    assert per_pos.shape == (20, 16) and np.all(np.isfinite(per_pos))
    assert np.all(per_pos.argmin(axis=1) == 5)
    # An image's log-density is that of its least likely position.
    np.testing.assert_array_equal(local_kde.log_density(odd), per_pos.min(axis=1))
    assert local_kde.log_density(normal).min() > local_kde.log_density(odd).max()
    # Between the two clusters is less likely than at either of them.
    mid = np.tile(np.array([0.0, 0.5, 0.0, 0.0])[:, None], 16)
    at = np.tile(np.array([2.0, 0.0, -1.0, 0.5])[:, None], 16)
    assert local_kde.log_density(mid.reshape(1, -1)) < local_kde.log_density(at.reshape(1, -1))


def test_kde_scoring_is_the_exact_weighted_kernel_sum(local_kde: LocalLatentKDE) -> None:
    # Near and very far queries, against a direct float64 sum over every centre.
    maps = np.concatenate([_code_maps(4, seed=2), 30.0 * _code_maps(2, seed=3)])
    z = (_as_vectors(maps) - local_kde.mean) @ local_kde.whiten
    h, c = local_kde.bandwidth, local_kde.centres
    d2 = ((z[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    expected = (logsumexp(np.log(local_kde.weights) - 0.5 * d2 / h**2, axis=1)
                - 0.5 * c.shape[1] * np.log(2 * np.pi * h**2))
    assert expected.min() < -1000.0  # far enough that a naive sum of exps would underflow
    got = local_kde.position_log_density(maps).ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)


def test_kde_centres_cover_the_codes_and_weights_count_them() -> None:
    maps = _code_maps(100, seed=5)
    maps.reshape(100, 4, 16)[0, :, 0] = [9.0, 9.0, -9.0, 9.0]  # one rare code vector
    kde = LocalLatentKDE.fit(maps, channels=4, n_centres=64, seed=0)
    assert kde.centres.shape == (64, 4) and kde.weights.shape == (64,)
    assert np.all(kde.weights > 0) and kde.weights.sum() == pytest.approx(1.0, abs=1e-12)
    z = kde.transform(_as_vectors(maps))
    # Whitened: the training vectors have zero mean and identity covariance.
    np.testing.assert_allclose(np.cov(z, rowvar=False, bias=True), np.eye(4), atol=1e-9)
    d2 = ((z[:, None, :] - kde.centres[None, :, :]) ** 2).sum(-1)
    # The rare vector is a centre of its own (farthest-point picks it), weight 1 / 1600.
    rare = kde.transform(np.array([[9.0, 9.0, -9.0, 9.0]]))[0]
    assert np.min(((kde.centres - rare) ** 2).sum(1)) < 1e-20
    assert kde.weights[np.argmin(((kde.centres - rare) ** 2).sum(1))] == 1 / 1600
    # Weights are the shares of vectors nearest to each centre.
    np.testing.assert_allclose(kde.weights, np.bincount(d2.argmin(1), minlength=64) / 1600)
    # Fewer distinct vectors than centres: every distinct vector becomes one centre.
    few = np.tile(_code_maps(1, seed=6)[:, :8], (10, 1))  # 10 images x 2 positions, 2 vectors
    small = LocalLatentKDE.fit(few, channels=4, n_centres=64)
    assert small.centres.shape == (2, 4)
    np.testing.assert_allclose(small.weights, [0.5, 0.5])


def test_kde_bandwidth_is_the_cross_validated_choice() -> None:
    rng = np.random.default_rng(4)

    def maps(vectors: np.ndarray) -> np.ndarray:  # (n * 16, 3) -> (n, 3 * 16)
        return vectors.reshape(-1, 16, 3).transpose(0, 2, 1).reshape(-1, 48)

    smooth = maps(rng.normal(size=(3200, 3)))
    centers = rng.normal(size=(8, 3)) * 8.0
    clustered = maps(centers[rng.integers(0, 8, 3200)] + 0.3 * rng.normal(size=(3200, 3)))
    h_smooth = LocalLatentKDE.fit(smooth, channels=3, n_centres=500).bandwidth
    h_clustered = LocalLatentKDE.fit(clustered, channels=3, n_centres=500).bandwidth
    for h in (h_smooth, h_clustered):
        assert np.isfinite(h) and h in LOCAL_BANDWIDTH_GRID
        # An interior optimum of the held-out likelihood, not an end of the grid.
        assert LOCAL_BANDWIDTH_GRID[0] < h < LOCAL_BANDWIDTH_GRID[-1]
    assert h_clustered < h_smooth


def test_kde_arrays_round_trip_exact(local_kde: LocalLatentKDE) -> None:
    arrays = local_kde.to_arrays()
    assert all(k.startswith("density.") and isinstance(v, np.ndarray)
               for k, v in arrays.items())
    copied = {k: np.array(v, order="C") for k, v in arrays.items()}
    for back in (LocalLatentKDE.from_arrays(arrays), density_from_arrays("kde", copied)):
        assert isinstance(back, LocalLatentKDE) and back.channels == 4
        assert back.bandwidth == local_kde.bandwidth
        assert np.array_equal(back.centres, local_kde.centres)
        assert np.array_equal(back.whiten, local_kde.whiten)
        assert np.array_equal(back.weights, local_kde.weights)
        maps = _code_maps(10, seed=7)
        assert np.array_equal(back.log_density(maps), local_kde.log_density(maps))
        for q in maps:
            assert np.array_equal(back.log_density(q[None]), local_kde.log_density(q[None]))


def test_kde_fit_is_reproducible_and_rejects_too_few_vectors() -> None:
    maps = _code_maps(30, seed=8)
    a = LocalLatentKDE.fit(maps, channels=4, n_centres=50, seed=3)
    b = LocalLatentKDE.fit(maps, channels=4, n_centres=50, seed=3)
    assert np.array_equal(a.centres, b.centres) and a.bandwidth == b.bandwidth
    with pytest.raises(ValueError, match="at least 2 latent code vectors"):
        LocalLatentKDE.fit(np.zeros((1, 4)), channels=4)


def test_kde_image_log_density_is_exactly_the_least_likely_position(
        local_kde: LocalLatentKDE) -> None:
    # The float32 screen + float64 rescoring of the candidates gives the exact minimum (to
    # float64 rounding) for near, far and tied positions alike.
    maps = np.concatenate([_code_maps(30, seed=7), 30.0 * _code_maps(2, seed=8),
                           np.repeat(_as_vectors(_code_maps(1, seed=9))[0], 16)[None]])
    exact = local_kde.position_log_density(maps)
    assert exact.min() < -1000.0 and np.ptp(exact[-1]) == 0.0
    np.testing.assert_allclose(local_kde.log_density(maps), exact.min(axis=1), rtol=1e-12,
                               atol=1e-12)


def _codes_with_quiet_dims(n: int, seed: int) -> np.ndarray:
    """Cells-mode-like codes: values up to ~10, and some dimensions (window pixels that are
    always background) whose spread over the cells is down to 1e-7."""
    codes = _codes(n, seed, dim=40) / 10.0
    quiet = np.random.default_rng(seed + 1000).normal(size=(n, 8))
    codes[:, :8] = 2.0 + quiet * np.geomspace(1e-7, 1e-4, 8)
    return codes


def test_float32_rounding_of_the_codes_barely_moves_the_log_density() -> None:
    # Codes come from a float32 network: their rounding (a few units in the last place,
    # depending on the number of CPU threads) must not move a score more than rounding does.
    train = _codes_with_quiet_dims(120, seed=11)
    d = LatentDensity.fit(train, n_components=8)
    rng = np.random.default_rng(12)
    test = _codes_with_quiet_dims(40, seed=13)
    test[:10] *= 1.5  # some unusual codes: the KDE's tail, where its slope is steepest
    ulp = np.spacing(np.abs(test).astype(np.float32)).astype(np.float64)
    moved = test + rng.integers(-3, 4, size=test.shape) * ulp  # +-3 float32 units
    before, after = d.log_density(test), d.log_density(moved)
    assert np.isfinite(before).all()
    change = np.abs(after - before) / np.abs(before)
    assert change.max() < 1e-4, change.max()
    # The floor is float32's resolution of the codes' magnitude times SCALE_FLOOR_ULPS.
    floor = SCALE_FLOOR_ULPS * np.finfo(np.float32).eps * np.abs(train).max()
    assert scale_floor(train) == pytest.approx(floor)
    np.testing.assert_array_equal(d.scale[:8], np.full(8, scale_floor(train)))
    np.testing.assert_allclose(d.scale, np.maximum(train.std(0), floor))

