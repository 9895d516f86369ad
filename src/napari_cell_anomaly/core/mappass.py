"""The patch-mode map pass: one tiled network pass over a field, and its windows.

:func:`analyse_field` runs encoder, decoder and error maps over a preprocessed image in
overlapping tiles (:func:`.tiling.predict_tiled`, ``TILE`` / ``TILE_MARGIN``), assembles the
reconstruction and error maps, and measures each model-size window (:func:`window_origins`):
its error over its foreground and its latent log-density. A window's latent code is read from
the same pass (:func:`pack_codes` carries the code map through the tiling as one extra
plane, :func:`unpack_codes` reads it back), or, for older model files, encoded again on its
own (:func:`encode_units`). :class:`.detector.AnomalyDetector` delegates its
``analyse_field`` here; :mod:`.bigimage` and :mod:`.lazymaps` stream the same pass.

Also here, shared by every mode: the tensor conversions (:func:`to_tensor`,
:func:`to_numpy`) and the foreground masks a unit's error is measured over
(:func:`foreground_mask`, :func:`foreground_masks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from .device import autocast, module_device
from .model import Autoencoder
from .scoring import reduce_map
from .tiling import PredictionStopped, predict_tiled

if TYPE_CHECKING:
    from .detector import AnomalyDetector

__all__ = [
    "TILE",
    "TILE_MARGIN",
    "analyse_field",
    "encode_units",
    "foreground_mask",
    "foreground_masks",
    "pack_codes",
    "to_numpy",
    "to_tensor",
    "unpack_codes",
    "window_origins",
]

#: Tile side for patch-mode inference; overlap margin discarded on each interior side.
TILE = 512
TILE_MARGIN = 32


def analyse_field(det: AnomalyDetector, x: np.ndarray,
                  stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
    """Run the network over a preprocessed image in overlapping tiles (patch mode) and
    measure each model-size window, the unit that patch-mode calibration and verdicts use.

    Parameters
    ----------
    det : AnomalyDetector
        A patch-mode detector (its network, window size, scoring, density and error maps).
    x : np.ndarray
        ``(H, W, C)`` preprocessed float32 image, at least ``size`` per side.
    stop : callable, optional
        Called between batches of tiles and of windows; True raises
        :class:`~.tiling.PredictionStopped`.

    Returns
    -------
    dict
        ``recon`` (H, W, C), ``error_map`` (H, W), ``ssim_map`` (H, W, or None when the
        error does not use SSIM), ``region`` (H, W) bool (union of the windows'
        foreground), and per window (see :func:`window_origins`) ``recon_error``,
        ``log_density`` and ``map_max`` (the map's maximum over the window's foreground).

    Notes
    -----
    One network pass: with ``ScoringConfig.window_codes == "field"`` the windows' latent
    codes are read from the tiled pass (packed into one extra output plane by
    :func:`pack_codes`), each window taking the latent block under it (a window whose
    origin is not a multiple of ``align``, the last of a side, takes the block at the
    origin rounded down). With ``"crop"`` (older model files) each window is encoded again
    on its own.
    """
    h, w, c = x.shape
    chw = x.transpose(2, 0, 1)  # a view: predict_tiled cuts channels-last tiles from it
    net = det.network
    device = det.device
    ssim = det.uses_ssim
    a = net.align
    field_codes = (det.scoring.window_codes == "field" and det.size % a == 0
                   and net.config.latent_channels <= a * a)

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        with det.autocast():
            z = net.encode(t)
            y = net.decode(z)
        z, y = z.float(), y.float()  # no copy in fp32
        se, dssim = det._maps(t, y, with_ssim=ssim)
        parts = [y, se, dssim] if ssim else [y, se]
        if field_codes:
            parts.append(pack_codes(z, a))
        return torch.cat(parts, dim=1)

    out = predict_tiled(fn, chw, tile=TILE, margin=TILE_MARGIN, align=a, stop=stop)
    ssim_map = out[c + 1] if ssim else None
    codes = unpack_codes(out[-1], a, net.config.latent_channels) if field_codes else None
    error_map = det._primary(out[c], ssim_map).astype(np.float32, copy=False)
    region = np.zeros((h, w), dtype=bool)
    windows = window_origins(h, w, det.size)
    errs, logds, maxima = [], [], []
    for batch_start in range(0, len(windows), 64):
        if stop is not None and stop():
            raise PredictionStopped(f"stopped after {batch_start} of {len(windows)} windows")
        batch = windows[batch_start:batch_start + 64]
        crops = np.stack([x[r:r + det.size, q:q + det.size] for r, q in batch])
        fg = (foreground_masks(crops, erode=det.scoring.erode)
              if det.scoring.foreground else [None] * len(crops))
        if codes is not None:
            k = det.size // a
            logds.append(det.density.log_density(np.stack(
                [codes[:, r // a:r // a + k, q // a:q // a + k].reshape(-1)
                 for r, q in batch])))
        else:
            logds.append(det.density.log_density(encode_units(net, crops,
                                                              precision=det.run_precision)))
        for (r, q), crop, found in zip(batch, crops, fg, strict=True):
            m = error_map[r:r + det.size, q:q + det.size]
            mask = det._region(crop, found)
            errs.append(reduce_map(m, det.scoring.reduce, mask))
            maxima.append(float(m[mask].max()))
            region[r:r + det.size, q:q + det.size] |= mask
    return {"recon": out[:c].transpose(1, 2, 0), "error_map": error_map,
            "ssim_map": ssim_map, "region": region, "recon_error": np.asarray(errs),
            "log_density": np.concatenate(logds), "map_max": np.asarray(maxima)}


def to_tensor(batch: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """``(N, H, W, C)`` images -> a float32 channels_last ``(N, C, H, W)`` tensor, on
    ``device`` (the CPU by default)."""
    t = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)
    t = t.contiguous(memory_format=torch.channels_last)
    return t if device is None else t.to(device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device -> a NumPy array (copied to the CPU first when needed)."""
    return t.detach().cpu().numpy()


def encode_units(network: Autoencoder, units: np.ndarray, batch_size: int = 128, *,
                 precision: str = "fp32") -> np.ndarray:
    """Flattened float32 latent codes ``(N, D)`` of ``(N, size, size, C)`` images, in
    batches, on the network's device, in ``precision`` (a resolved one, see
    :func:`.device.autocast`)."""
    device = module_device(network)
    out = []
    with torch.inference_mode():
        for start in range(0, len(units), batch_size):
            x = to_tensor(units[start:start + batch_size], device)
            with autocast(device, precision):
                z = network.encode(x)
            out.append(to_numpy(z.float().flatten(1)))
    return np.concatenate(out)


def pack_codes(z: torch.Tensor, align: int) -> torch.Tensor:
    """Latent code maps ``(N, C, h, w)`` as one plane ``(N, 1, h * align, w * align)``.

    Channel ``j`` of latent position ``(i, k)`` goes to pixel ``(i * align + j // align,
    k * align + j % align)`` of the ``align x align`` block under that position (the other
    pixels are 0), so the plane can ride along the maps of a tiled pass, whose tiles start at
    multiples of ``align``, and :func:`unpack_codes` reads the codes back exactly.
    Needs ``C <= align ** 2``.
    """
    n, ch, h, w = z.shape
    if ch > align * align:
        raise ValueError(f"{ch} latent channels do not fit in {align} x {align} blocks")
    rows = -(-ch // align)  # block rows that hold channels
    if rows * align > ch:
        z = torch.cat([z, z.new_zeros((n, rows * align - ch, h, w))], dim=1)
    plane = z.new_zeros((n, 1, h * align, w * align))
    # plane[m, 0, i * align + r, k * align + q] = z[m, r * align + q, i, k]: a strided copy
    # into the first ``rows`` rows of each block (what pixel_shuffle of the codes padded to
    # align ** 2 channels gives, without shuffling the zeros)
    blocks = plane.view(n, h, align, w, align)
    blocks[:, :, :rows] = z.reshape(n, rows, align, h, w).permute(0, 3, 1, 4, 2)
    return plane


def unpack_codes(plane: np.ndarray, align: int, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_codes` for one image: ``(H, W)`` -> ``(channels, H // align,
    W // align)`` (only the whole ``align x align`` blocks of the plane)."""
    hb, wb = plane.shape[0] // align, plane.shape[1] // align
    blocks = plane[:hb * align, :wb * align].reshape(hb, align, wb, align)
    return np.ascontiguousarray(
        blocks.transpose(1, 3, 0, 2).reshape(align * align, hb, wb)[:channels])


def window_origins(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` windows covering an ``h x w`` image (last ones flush)."""
    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, size))
        if s[-1] != n - size:
            s.append(n - size)
        return s

    return [(r, q) for r in starts(h) for q in starts(w)]


def foreground_mask(x: np.ndarray, erode: int = 2) -> np.ndarray:
    """Pixels of a preprocessed image that differ from its border colour.

    The border colour is the median of the outermost pixels; a pixel belongs to the object when
    it is further from that colour than a quarter of the image's own colour spread. The mask is
    eroded by ``erode`` pixels to drop the object's rim.

    Parameters
    ----------
    x : np.ndarray
        ``(H, W, C)`` float image in [0, 1].
    erode : int
        Erosion radius in pixels.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool mask (may be empty, in which case callers use every pixel).
    """
    return foreground_masks(x[None], erode)[0]


def foreground_masks(units: np.ndarray, erode: int = 2) -> np.ndarray:
    """:func:`foreground_mask` of each of ``(N, H, W, C)`` images at once, ``(N, H, W)``.

    The same result as one call per image (hole filling and erosion connect pixels within an
    image only), in a few array operations instead of ``N``.
    """
    x = np.asarray(units)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)
    dist = np.sqrt(_channel_sum_of_squares(x - bg[:, None, None, :]))
    # Each image's level as one image alone computes it (a Python float, compared in the
    # map's dtype), so that the masks are bit-identical.
    level = np.array([0.25 * max(float(d), 1e-6) for d in dist.reshape(len(x), -1).max(axis=1)]
                     ).astype(dist.dtype)
    mask = _fill_holes(dist > level[:, None, None])
    for _ in range(max(erode, 0)):
        mask = _erode_cross(mask)
    return mask


def _channel_sum_of_squares(d: np.ndarray) -> np.ndarray:
    """``(d ** 2).sum(-1)``, bit for bit, without NumPy's slow reduction over a short last
    axis: below 8 channels NumPy adds them one after the other, and so does this."""
    if d.shape[-1] >= 8:
        return (d**2).sum(-1)
    sq = d * d
    out = sq[..., 0].copy()
    for k in range(1, d.shape[-1]):
        out += sq[..., k]
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each ``(H, W)`` mask of an ``(N, H, W)`` stack: background pixels
    not 4-connected to the image's edge (as ``scipy.ndimage.binary_fill_holes`` with a
    4-connected element within each image, in one labelling pass)."""
    from scipy import ndimage

    within = np.zeros((3, 3, 3), dtype=bool)
    within[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(~mask, structure=within)
    open_to_edge = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        open_to_edge[edge.ravel()] = True
    open_to_edge[0] = True  # label 0: the mask itself
    return mask | ~open_to_edge[labels]


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    """One binary erosion of each ``(H, W)`` mask of an ``(N, H, W)`` stack by the
    4-connected cross, outside the image counting as background (as
    ``scipy.ndimage.binary_erosion``)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    return (p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2]
            & p[:, 1:-1, 2:])
