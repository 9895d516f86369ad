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
