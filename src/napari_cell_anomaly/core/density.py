"""Latent density models over an autoencoder's latent codes, stored as plain arrays.

Three kinds, named by :attr:`ScoringConfig.density <.scoring.ScoringConfig>`:

``"kde"`` (:class:`LocalLatentKDE`, the default)
    A Gaussian kernel density estimate over the whitened code vectors of single latent
    positions: the kernel centres are a subset of the training vectors chosen to cover the code
    space (greedy farthest-point), each weighted by the share of training vectors nearest to
    it; bandwidth by cross-validated likelihood of held-out images' vectors; exact scoring. An
    image's log-density is that of its least likely position.
``"gmm"`` (:class:`LocalLatentDensity`)
    One Gaussian mixture, pooled over the code vectors of all latent positions; an image's
    log-density is that of its least likely position. (Files written before version 2 of the
    density names call it ``"local"``.)
``"kde-flat"`` (:class:`LatentDensity`)
    The first design, kept so that old model files score exactly as before: a Gaussian KDE over
    whole flattened code maps, standardized and PCA-reduced. (Old files call it ``"kde"``.)

``"kde"`` and ``"gmm"`` are *position-level*: one model of single code vectors, pooled over all
positions of all training images (not one model per position), which also fits windows of
large fields unchanged. Each model is fitted on the latent codes of the *training* normals
only and stored as plain arrays (no pickled estimator), so a model file rebuilds it exactly
without running code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scoring import DENSITY_KINDS

# scikit-learn and scipy.special are imported where a fit or an old kind needs them: scoring
# with the default KDE needs neither, and importing them would double the command line's
# start-up time.

#: Bandwidths tried by cross-validation, relative to unit-variance (whitened) components.
BANDWIDTH_GRID = np.geomspace(0.05, 3.0, 24)


#: :func:`scale_floor` in float32 units in the last place of the codes' largest magnitude:
#: thread-dependent rounding of float32 codes (a few such units; 2.9e-6 on codes up to 11,
#: about 2 units, on a dsb2018-fluo cells model) then moves a standardized code by about 1e-3
#: at most.
SCALE_FLOOR_ULPS = 4096


def scale_floor(codes: np.ndarray) -> float:
    """Smallest per-dimension scale :meth:`LatentDensity.fit` standardizes codes by.

    ``SCALE_FLOOR_ULPS * eps32 * max|codes|`` (4.9e-4 of the largest code magnitude), where
    ``eps32`` is float32's machine epsilon: the float32 resolution of the codes' magnitude,
    times a margin, so that no dimension amplifies rounding noise.

    Parameters
    ----------
    codes : np.ndarray
        ``(N, D)`` latent codes.

    Returns
    -------
    float
    """
    magnitude = float(np.abs(np.asarray(codes, dtype=np.float64)).max(initial=0.0))
    return SCALE_FLOOR_ULPS * float(np.finfo(np.float32).eps) * magnitude


@dataclass
class LatentDensity:
    """Density kind ``"kde-flat"``: a Gaussian KDE over whole flattened, reduced code maps.

    Kept for model files written before the position-level models; new models use
    :class:`LocalLatentKDE` or :class:`LocalLatentDensity`.

    Attributes
    ----------
    mean, scale : np.ndarray
        ``(D,)`` standardization of the raw codes.
    components : np.ndarray
        ``(K, D)`` PCA directions, already divided by the component standard deviations, so the
        reduced codes are white.
    pca_mean : np.ndarray
        ``(D,)`` mean subtracted before projection.
    points : np.ndarray
        ``(N, K)`` reduced training codes (the kernel centres).
    bandwidth : float
        Kernel standard deviation in reduced (whitened) units.
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    pca_mean: np.ndarray
    points: np.ndarray
    bandwidth: float

    @classmethod
    def fit(cls, codes: np.ndarray, *, n_components: int = 16, seed: int = 0) -> LatentDensity:
        """Fit the density on training codes.

        Parameters
        ----------
        codes : np.ndarray
            ``(N, D)`` latent codes of normal training samples (``N >= 2``).
        n_components : int
            PCA dimension (capped by ``N - 1`` and ``D``).
        seed : int
            Seed for the cross-validation folds.

        Returns
        -------
        LatentDensity

        Notes
        -----
        Each code dimension is standardized by its standard deviation, but by no less than
        :func:`scale_floor` (:data:`SCALE_FLOOR_ULPS` float32 units in the last place of the
        codes' largest magnitude). Codes come from a float32 network whose rounding depends on
        the number of CPU threads (a few units in the last place); a dimension that barely
        varies over the training codes (in cells mode, window pixels that are always
        background: standard deviations down to 1e-7 on codes up to 11) would turn that
        rounding into several standard deviations and make scores depend on the thread count.
        With the floor, rounding moves a standardized code by about 1e-3 at most. A model file
        stores the fitted ``scale``, so models fitted before the floor score exactly as before
        (and keep their thread dependence until retrained).
        """
        from sklearn.decomposition import PCA
        from sklearn.model_selection import GridSearchCV, KFold
        from sklearn.neighbors import KernelDensity

        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or codes.shape[0] < 2:
            raise ValueError(f"need at least 2 latent codes of shape (N, D), got {codes.shape}")
        mean = codes.mean(0)
        scale = np.maximum(codes.std(0), scale_floor(codes))
        scale = np.where(scale > 0.0, scale, 1.0)  # all codes zero
        z = (codes - mean) / scale
        k = int(max(1, min(n_components, codes.shape[0] - 1, codes.shape[1])))
        pca = PCA(n_components=k, whiten=True, random_state=seed).fit(z)
        std = np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
        # C order (PCA's is Fortran): a model loaded from a file, whose arrays are C order,
        # then gives bit-identical log-densities.
        components = np.ascontiguousarray(pca.components_ / std[:, None])
        points = (z - pca.mean_) @ components.T
        n_splits = min(5, points.shape[0])
        if n_splits >= 2:
            search = GridSearchCV(
                KernelDensity(kernel="gaussian"),
                {"bandwidth": BANDWIDTH_GRID},
                cv=KFold(n_splits=n_splits, shuffle=True, random_state=seed),
            ).fit(points)
            bandwidth = float(search.best_params_["bandwidth"])
        else:
            bandwidth = 1.0
        return cls(mean=mean, scale=scale, components=components, pca_mean=pca.mean_,
                   points=points, bandwidth=bandwidth)

    def reduce(self, codes: np.ndarray) -> np.ndarray:
        """Project raw codes ``(N, D)`` to the whitened PCA space ``(N, K)``."""
        z = (np.asarray(codes, dtype=np.float64) - self.mean) / self.scale
        return (z - self.pca_mean) @ self.components.T

    def log_density(self, codes: np.ndarray) -> np.ndarray:
        """Log-density of raw codes ``(N, D)`` under the KDE, ``(N,)``; low = unusual."""
        from scipy.special import logsumexp

        q = self.reduce(codes)
        h = self.bandwidth
        d2 = (
            (q**2).sum(1)[:, None]
            - 2.0 * q @ self.points.T
            + (self.points**2).sum(1)[None, :]
        )
        k = self.points.shape[1]
        norm = np.log(self.points.shape[0]) + 0.5 * k * np.log(2.0 * np.pi * h * h)
        return logsumexp(-0.5 * np.maximum(d2, 0.0) / (h * h), axis=1) - norm

    def to_arrays(self, prefix: str = "density.") -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        return {
            prefix + "mean": self.mean, prefix + "scale": self.scale,
            prefix + "components": self.components, prefix + "pca_mean": self.pca_mean,
            prefix + "points": self.points,
            prefix + "bandwidth": np.array([self.bandwidth], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "density.") -> LatentDensity:
        """Inverse of :meth:`to_arrays`."""
        return cls(
            mean=arrays[prefix + "mean"], scale=arrays[prefix + "scale"],
            components=arrays[prefix + "components"], pca_mean=arrays[prefix + "pca_mean"],
            points=arrays[prefix + "points"], bandwidth=float(arrays[prefix + "bandwidth"][0]),
        )


class _PooledPositions:
    """Shared by the position-level densities: an image is as likely as its least likely
    position (subclasses define ``position_log_density(codes) -> (N, H * W)``)."""

    def position_log_density(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def log_density(self, codes: np.ndarray) -> np.ndarray:
        """Log-density of each image's least likely position, ``(N,)``; low = unusual."""
        return self.position_log_density(codes).min(axis=1)


@dataclass
class LocalLatentDensity(_PooledPositions):
    """Density kind ``"gmm"``: one Gaussian mixture over the code vectors of all positions.

    The flattened bottleneck of a convolutional autoencoder mixes *where* with *what*: a small
    unusual structure moves one position's code and barely moves a global density over whole
    code maps. This model instead learns the distribution of single code vectors (one per
    ``align x align`` block of the input), pooled over all positions of the training normals
    (one mixture for every position, not one per position), and an image's log-density is
    that of its least likely position. It works unchanged for windows of large fields.

    Attributes
    ----------
    channels : int
        Latent channels ``C`` (codes arrive flattened as ``(N, C * H * W)``, channel-major).
    mean, scale : np.ndarray
        ``(C,)`` standardization of code vectors.
    weights : np.ndarray
        ``(K,)`` mixture weights.
    means : np.ndarray
        ``(K, C)`` component means (standardized units).
    precisions_chol : np.ndarray
        ``(K, C, C)`` Cholesky factors of the component precision matrices.
    """

    channels: int
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    precisions_chol: np.ndarray

    @classmethod
    def fit(cls, codes: np.ndarray, *, channels: int, n_components: int = 16,
            max_vectors: int = 20000, seed: int = 0) -> LocalLatentDensity:
        """Fit the mixture on training codes.

        Parameters
        ----------
        codes : np.ndarray
            ``(N, C * H * W)`` flattened (channel-major) latent code maps of training normals.
        channels : int
            ``C``.
        n_components : int
            Mixture components (capped by the number of code vectors).
        max_vectors : int
            Random subsample of code vectors used for the fit (keeps it to seconds).
        seed : int
            Seed for subsampling and initialisation.
        """
        from sklearn.mixture import GaussianMixture

        v = _vectors(codes, channels)
        if v.shape[0] < 2:
            raise ValueError(f"need at least 2 latent code vectors, got {v.shape[0]}")
        rng = np.random.default_rng(seed)
        if v.shape[0] > max_vectors:
            v = v[rng.choice(v.shape[0], max_vectors, replace=False)]
        mean = v.mean(0)
        scale = v.std(0)
        scale = np.where(scale > 1e-8 * max(scale.max(), 1e-12), scale, 1.0)
        z = (v - mean) / scale
        k = int(max(1, min(n_components, z.shape[0] // 10 or 1)))
        # k-means++ seeding (no threaded Lloyd iterations): bit-for-bit reproducible.
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, max_iter=100,
                              init_params="k-means++",
                              random_state=seed).fit(z)
        return cls(channels=int(channels), mean=mean, scale=scale, weights=gmm.weights_,
                   means=gmm.means_, precisions_chol=gmm.precisions_cholesky_)

    def position_log_density(self, codes: np.ndarray) -> np.ndarray:
        """Log-density of every position's code vector, ``(N, H * W)``."""
        from scipy.special import logsumexp

        codes = np.asarray(codes, dtype=np.float64)
        n = codes.shape[0]
        z = (_vectors(codes, self.channels) - self.mean) / self.scale
        c = self.channels
        logp = np.empty((z.shape[0], len(self.weights)))
        for j, (mu, pc) in enumerate(zip(self.means, self.precisions_chol, strict=True)):
            y = (z - mu) @ pc
            log_det = float(np.log(np.diagonal(pc)).sum())
            logp[:, j] = (-0.5 * (c * np.log(2 * np.pi) + (y * y).sum(1)) + log_det
                          + np.log(self.weights[j]))
        return logsumexp(logp, axis=1).reshape(n, -1)

    def to_arrays(self, prefix: str = "density.") -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        return {
            prefix + "local_channels": np.array([self.channels], dtype=np.int64),
            prefix + "mean": self.mean, prefix + "scale": self.scale,
            prefix + "weights": self.weights, prefix + "means": self.means,
            prefix + "precisions_chol": self.precisions_chol,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray],
                    prefix: str = "density.") -> LocalLatentDensity:
        """Inverse of :meth:`to_arrays`."""
        return cls(channels=int(arrays[prefix + "local_channels"][0]),
                   mean=arrays[prefix + "mean"], scale=arrays[prefix + "scale"],
                   weights=arrays[prefix + "weights"], means=arrays[prefix + "means"],
                   precisions_chol=arrays[prefix + "precisions_chol"])


#: Bandwidths tried by cross-validation for :class:`LocalLatentKDE`, in whitened units.
LOCAL_BANDWIDTH_GRID = np.geomspace(0.01, 3.0, 32)
#: Kernel evaluations per scoring batch (rows x centres): 4 MB of float64 at most (256 rows of
#: 2,048 centres: fits the CPU cache, twice as fast as 32 MB batches).
_BATCH_PAIRS = 1 << 19


@dataclass
class LocalLatentKDE(_PooledPositions):
    """Density kind ``"kde"``: a Gaussian KDE over the code vectors of single latent positions.

    Like :class:`LocalLatentDensity` it models single code vectors (one per ``align x align``
    block of the input) pooled over all positions of the training normals, and an image's
    log-density is that of its least likely position; the density is a kernel estimate
    instead of a mixture.

    Fit: code vectors are whitened (centred and multiplied by ``whiten``, so that the training
    vectors have identity covariance and the kernels follow the codes' correlations; on malaria
    val crops this gave a better density AUROC than per-channel scaling, 0.809 vs 0.785, a
    number that guided the choice); up to ``n_centres`` kernel centres are picked from (a
    random subsample of at most ``max_vectors``) training vectors by greedy farthest-point
    traversal (k-centre), so they cover the whole code space including its rare parts, and
    each centre is weighted by the share of those vectors nearest to it; the bandwidth
    maximises the likelihood of the vectors of held-out training images under a KDE built the
    same way from the other images. Scoring is exact: a log-sum-exp over every centre, in
    float64, in batches of bounded memory.

    Attributes
    ----------
    channels : int
        Latent channels ``C`` (codes arrive flattened as ``(N, C * H * W)``, channel-major).
    mean : np.ndarray
        ``(C,)`` mean of the training code vectors.
    whiten : np.ndarray
        ``(C, C)`` whitening matrix: ``(v - mean) @ whiten`` has identity covariance.
    centres : np.ndarray
        ``(M, C)`` kernel centres (whitened units).
    weights : np.ndarray
        ``(M,)`` kernel weights (shares of the training vectors, summing to 1).
    bandwidth : float
        Kernel standard deviation in whitened units.
    """

    channels: int
    mean: np.ndarray
    whiten: np.ndarray
    centres: np.ndarray
    weights: np.ndarray
    bandwidth: float

    @classmethod
    def fit(cls, codes: np.ndarray, *, channels: int, n_centres: int = 2048,
            max_vectors: int = 50000, holdout: float = 0.2, seed: int = 0) -> LocalLatentKDE:
        """Fit the KDE on training codes.

        Parameters
        ----------
        codes : np.ndarray
            ``(N, C * H * W)`` flattened (channel-major) latent code maps of training normals.
        channels : int
            ``C``.
        n_centres : int
            Most kernel centres kept (fewer when there are fewer distinct vectors).
        max_vectors : int
            Random subsample of code vectors the centres are chosen from and weighted by.
        holdout : float
            Fraction of the images (of the vectors, with a single image) whose vectors
            score the candidate bandwidths in :data:`LOCAL_BANDWIDTH_GRID`.
        seed : int
            Seed for the subsampling and the held-out split.

        Returns
        -------
        LocalLatentKDE
        """
        v = _vectors(codes, channels)
        n = int(np.asarray(codes).shape[0])
        if v.shape[0] < 2:
            raise ValueError(f"need at least 2 latent code vectors, got {v.shape[0]}")
        rng = np.random.default_rng(seed)
        mean = v.mean(0)
        eigval, eigvec = np.linalg.eigh(np.atleast_2d(np.cov(v, rowvar=False, bias=True)))
        # Directions without variance (dead latent channels) are left unscaled.
        ok = eigval > 1e-8 * max(float(eigval.max()), 1e-12)
        whiten = np.ascontiguousarray(eigvec / np.sqrt(np.where(ok, eigval, 1.0)))
        z = (v - mean) @ whiten
        # Held-out likelihood: whole images are held out (positions of one image are alike).
        per = v.shape[0] // n
        if n >= 2:
            held_img = np.zeros(n, dtype=bool)
            held_img[rng.permutation(n)[:max(1, round(holdout * n))]] = True
            held = np.repeat(held_img, per)
        else:
            held = np.zeros(v.shape[0], dtype=bool)
            held[rng.permutation(v.shape[0])[:max(1, round(holdout * v.shape[0]))]] = True
        cv_centres, cv_weights = _cover(z[~held], n_centres, max_vectors, rng)
        queries = z[held]
        if queries.shape[0] > 5000:
            queries = queries[rng.choice(queries.shape[0], 5000, replace=False)]
        scores = _mean_log_kde(queries, cv_centres, cv_weights, LOCAL_BANDWIDTH_GRID)
        bandwidth = float(LOCAL_BANDWIDTH_GRID[int(np.argmax(scores))])
        centres, weights = _cover(z, n_centres, max_vectors, rng)
        return cls(channels=int(channels), mean=mean, whiten=whiten, centres=centres,
                   weights=weights, bandwidth=bandwidth)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Whiten code vectors ``(K, C)`` into the space of the kernel centres."""
        return (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.whiten

    def position_log_density(self, codes: np.ndarray) -> np.ndarray:
        """Log-density (whitened units) of every position's code vector, ``(N, H * W)``."""
        n = np.asarray(codes).shape[0]
        z = self.transform(_vectors(codes, self.channels))
        return _log_kde(z, self.centres, np.log(self.weights), self.bandwidth).reshape(n, -1)

    def log_density(self, codes: np.ndarray) -> np.ndarray:
        """Log-density of each image's least likely position, ``(N,)``; low = unusual.

        The same numbers as ``position_log_density(codes).min(axis=1)`` (to float64
        rounding, about 1e-13 relative; the matrix product's rounding depends on how many
        rows it gets) in about 60-75% of the time: every position is first scored in float32
        (:func:`_log_kde_screen`, with a bound on its rounding error), and only the positions
        that may be their image's least likely one (for an image of 64 positions, usually one
        or two) are scored again exactly, in float64.
        """
        n = np.asarray(codes).shape[0]
        z = self.transform(_vectors(codes, self.channels))
        log_w = np.log(self.weights)
        approx, tol = _log_kde_screen(z, self.centres, log_w, self.bandwidth)
        approx, tol = approx.reshape(n, -1), tol.reshape(n, -1)
        maybe = approx - tol <= (approx + tol).min(axis=1, keepdims=True)
        exact = np.full(approx.shape, np.inf)
        exact[maybe] = _log_kde(z[maybe.ravel()], self.centres, log_w, self.bandwidth)
        return exact.min(axis=1)

    def to_arrays(self, prefix: str = "density.") -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        return {
            prefix + "kde_channels": np.array([self.channels], dtype=np.int64),
            prefix + "mean": self.mean, prefix + "kde_whiten": self.whiten,
            prefix + "kde_centres": self.centres, prefix + "kde_weights": self.weights,
            prefix + "bandwidth": np.array([self.bandwidth], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray],
                    prefix: str = "density.") -> LocalLatentKDE:
        """Inverse of :meth:`to_arrays`."""
        return cls(channels=int(arrays[prefix + "kde_channels"][0]),
                   mean=arrays[prefix + "mean"], whiten=arrays[prefix + "kde_whiten"],
                   centres=arrays[prefix + "kde_centres"],
                   weights=arrays[prefix + "kde_weights"],
                   bandwidth=float(arrays[prefix + "bandwidth"][0]))


def _cover(z: np.ndarray, n_centres: int, max_vectors: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy farthest-point centres of (a subsample of) ``z`` and the share of the vectors
    nearest to each: ``(M, C)`` centres, ``(M,)`` weights."""
    pool = z if z.shape[0] <= max_vectors else z[rng.choice(z.shape[0], max_vectors,
                                                            replace=False)]
    pool = np.ascontiguousarray(pool)
    first = int(np.argmin(((pool - pool.mean(0)) ** 2).sum(1)))
    chosen = [first]
    dmin = ((pool - pool[first]) ** 2).sum(1)
    nearest = np.zeros(pool.shape[0], dtype=np.int64)
    for j in range(1, min(n_centres, pool.shape[0])):
        i = int(np.argmax(dmin))
        if dmin[i] <= 0.0:  # every vector coincides with a centre
            break
        d = ((pool - pool[i]) ** 2).sum(1)
        closer = d < dmin
        dmin[closer] = d[closer]
        nearest[closer] = j
        chosen.append(i)
    weights = np.bincount(nearest, minlength=len(chosen)) / pool.shape[0]
    return pool[chosen], weights.astype(np.float64)


def _log_kde(z: np.ndarray, centres: np.ndarray, log_weights: np.ndarray,
             bandwidth: float) -> np.ndarray:
    """Exact log-density of a weighted Gaussian KDE at each row of ``z``, in batches.

    ``-|z - c|^2 / 2h^2 = (z . c - |c|^2 / 2) / h^2 - |z|^2 / 2h^2``: the last term is the same
    for every centre and leaves the log-sum-exp, so each batch costs one fused matrix product
    and add and the log-sum-exp itself. Computed in float64 with torch's CPU kernels
    (vectorised, on all of torch's threads; about 10x faster than NumPy's here) in batches
    small enough to stay in the CPU cache; inputs and output are NumPy arrays.
    """
    z = np.asarray(z, dtype=np.float64)
    inv_h2 = 1.0 / (bandwidth * bandwidth)
    proj = torch.from_numpy(np.ascontiguousarray(centres.T * inv_h2, dtype=np.float64))
    offset = torch.from_numpy(np.ascontiguousarray(
        log_weights - 0.5 * inv_h2 * (centres * centres).sum(1), dtype=np.float64))
    zt = torch.from_numpy(np.ascontiguousarray(z))
    out = torch.empty(z.shape[0], dtype=torch.float64)
    step = max(1, _BATCH_PAIRS // max(1, centres.shape[0]))
    with torch.inference_mode():
        for start in range(0, z.shape[0], step):
            a = torch.addmm(offset, zt[start:start + step], proj)
            out[start:start + step] = torch.logsumexp(a, dim=1)
    c = centres.shape[1]
    return (out.numpy() - 0.5 * inv_h2 * (z * z).sum(1)
            - 0.5 * c * np.log(2.0 * np.pi / inv_h2))


#: Screening: float32 kernel sums in batches of this many rows (2,048 centres: 2 MB).
_SCREEN_ROWS = 256


def _log_kde_screen(z: np.ndarray, centres: np.ndarray, log_weights: np.ndarray,
                    bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_log_kde` in float32, with a bound on its error: ``(approx, tol)``, ``(K,)``
    each, the exact value lying within ``approx +- tol``.

    The same fused product and log-sum-exp as :func:`_log_kde` in float32 (half the memory
    traffic, twice the SIMD width). Each kernel's exponent is rounded by at most a few units
    in the last place of the magnitudes it is made of (``|z| * max_j sum_k |c_jk| / h^2`` and
    the largest offset) and the sum adds ``O(log M)`` units; ``tol`` is 128 units of float32
    rounding of those magnitudes, some 10x what they can reach. Exponents more than 80 below
    a query's largest are clamped there (their share is below ``M * e^-80``), which keeps
    the float32 exponentials out of the slow subnormal range.
    """
    z = np.asarray(z, dtype=np.float64)
    inv_h2 = 1.0 / (bandwidth * bandwidth)
    proj64 = centres.T * inv_h2
    offset64 = log_weights - 0.5 * inv_h2 * (centres * centres).sum(1)
    proj = torch.from_numpy(np.ascontiguousarray(proj64, dtype=np.float32))
    offset = torch.from_numpy(np.ascontiguousarray(offset64, dtype=np.float32))
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    out = torch.empty(z.shape[0], dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, z.shape[0], _SCREEN_ROWS):
            a = torch.addmm(offset, zt[start:start + _SCREEN_ROWS], proj)
            top = a.amax(dim=1, keepdim=True)
            a.sub_(top).clamp_(min=-80.0).exp_()
            out[start:start + _SCREEN_ROWS] = a.sum(dim=1).log_().add_(top[:, 0])
    lse = out.numpy().astype(np.float64)
    zz = (z * z).sum(1)
    magnitude = (np.sqrt(zz) * np.abs(proj64).sum(0).max() + np.abs(offset64).max()
                 + np.abs(lse) + 1.0)
    tol = 128.0 * float(np.finfo(np.float32).eps) * magnitude
    c = centres.shape[1]
    return lse - 0.5 * inv_h2 * zz - 0.5 * c * np.log(2.0 * np.pi / inv_h2), tol


def _mean_log_kde(queries: np.ndarray, centres: np.ndarray, weights: np.ndarray,
                  bandwidths: np.ndarray) -> np.ndarray:
    """Mean log-density of ``queries`` under the weighted KDE, for each bandwidth."""
    log_w = np.log(weights)
    return np.array([_log_kde(queries, centres, log_w, float(h)).mean() for h in bandwidths])


def _vectors(codes: np.ndarray, channels: int) -> np.ndarray:
    """``(N, C * P)`` channel-major codes -> ``(N * P, C)`` code vectors."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] % channels:
        raise ValueError(f"codes of shape {codes.shape} do not hold {channels}-channel maps")
    n = codes.shape[0]
    return codes.reshape(n, channels, -1).transpose(0, 2, 1).reshape(-1, channels)


#: A latent density model of any kind.
Density = LocalLatentKDE | LocalLatentDensity | LatentDensity


def fit_density(kind: str, codes: np.ndarray, *, channels: int, seed: int = 0) -> Density:
    """Fit the latent density model named ``kind`` (one of :data:`.scoring.DENSITY_KINDS`).

    Parameters
    ----------
    kind : {"kde", "gmm", "kde-flat"}
        See the module docstring.
    codes : np.ndarray
        ``(N, C * H * W)`` flattened (channel-major) latent code maps of training normals.
    channels : int
        Latent channels ``C``.
    seed : int
        Seed of the fit.

    Returns
    -------
    LocalLatentKDE or LocalLatentDensity or LatentDensity
    """
    if kind == "kde":
        return LocalLatentKDE.fit(codes, channels=channels, seed=seed)
    if kind == "gmm":
        return LocalLatentDensity.fit(codes, channels=channels, seed=seed)
    if kind == "kde-flat":
        return LatentDensity.fit(codes, seed=seed)
    raise ValueError(f"unknown density {kind!r}; expected one of {DENSITY_KINDS}")


def density_from_arrays(kind: str, arrays: dict[str, np.ndarray]) -> Density:
    """Rebuild a stored density of kind ``kind`` (current names; see
    :meth:`.scoring.ScoringConfig.from_dict` for the names of old files)."""
    if kind == "kde":
        return LocalLatentKDE.from_arrays(arrays)
    if kind == "gmm":
        return LocalLatentDensity.from_arrays(arrays)
    if kind == "kde-flat":
        return LatentDensity.from_arrays(arrays)
    raise ValueError(f"unknown density {kind!r}; expected one of {DENSITY_KINDS}")
