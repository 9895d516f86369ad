"""Latent density model: standardize -> PCA -> Gaussian KDE with a cross-validated bandwidth.

The density is fitted on the latent codes of the *training* normals only and stored as plain
arrays (no pickled estimator), so a model file can rebuild it exactly without running code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity

#: Bandwidths tried by cross-validation, relative to unit-variance (whitened) components.
BANDWIDTH_GRID = np.geomspace(0.05, 3.0, 24)


@dataclass
class LatentDensity:
    """A fitted Gaussian kernel density over reduced latent codes.

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
        """
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or codes.shape[0] < 2:
            raise ValueError(f"need at least 2 latent codes of shape (N, D), got {codes.shape}")
        mean = codes.mean(0)
        scale = codes.std(0)
        scale = np.where(scale > 1e-8 * max(scale.max(), 1e-12), scale, 1.0)
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


#: Latent density models a :class:`ScoringConfig` can name.
DENSITY_KINDS = ("local", "kde")


@dataclass
class LocalLatentDensity:
    """A Gaussian mixture over the code vectors at each position of the latent map.

    The flattened bottleneck of a convolutional autoencoder mixes *where* with *what*: a small
    unusual structure moves one position's code and barely moves a global density over whole
    code maps. This model instead learns the distribution of single code vectors (one per
    ``align x align`` block of the input) over all positions of the training normals, and an
    image's log-density is that of its least likely position. It works unchanged for windows
    of large fields.

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

    def log_density(self, codes: np.ndarray) -> np.ndarray:
        """Log-density of each image's least likely position, ``(N,)``; low = unusual."""
        return self.position_log_density(codes).min(axis=1)

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


def _vectors(codes: np.ndarray, channels: int) -> np.ndarray:
    """``(N, C * P)`` channel-major codes -> ``(N * P, C)`` code vectors."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] % channels:
        raise ValueError(f"codes of shape {codes.shape} do not hold {channels}-channel maps")
    n = codes.shape[0]
    return codes.reshape(n, channels, -1).transpose(0, 2, 1).reshape(-1, channels)


def fit_density(kind: str, codes: np.ndarray, *, channels: int, seed: int = 0
                ) -> LatentDensity | LocalLatentDensity:
    """Fit the latent density model named ``kind`` (see :data:`DENSITY_KINDS`)."""
    if kind == "local":
        return LocalLatentDensity.fit(codes, channels=channels, seed=seed)
    if kind == "kde":
        return LatentDensity.fit(codes, seed=seed)
    raise ValueError(f"unknown density {kind!r}; expected one of {DENSITY_KINDS}")


def density_from_arrays(kind: str, arrays: dict[str, np.ndarray]
                        ) -> LatentDensity | LocalLatentDensity:
    """Rebuild a stored density of kind ``kind``."""
    if kind == "local":
        return LocalLatentDensity.from_arrays(arrays)
    return LatentDensity.from_arrays(arrays)
