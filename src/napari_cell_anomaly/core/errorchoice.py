"""Which per-pixel error a model scores with, chosen from the kind of its training images.

CIE L*a*b* (``error="lab"``) is a perceptual colour space for sRGB pictures: it earned its
place on RGB brightfield smears (stained cells on a bright background). It does not belong on
fluorescence or on arbitrary channel sets, where it would apply the sRGB gamma to normalised
intensities (and it needs 1 or 3 channels). :func:`choose_error` therefore picks

- ``"lab"`` for RGB colour images (3 channels, or RGBA, of ``uint8``: stained brightfield
  pictures), unless they look like a fluorescence composite: most of their pixels that are
  not pure black (crop padding) are dark, below a quarter of the full range in luminosity;
- :data:`CHANNELS_ERROR` for everything else (grayscale, fluorescence, any number of
  channels): an error on the normalised channel intensities (see ``docs/benchmarks.md`` for
  the measurement behind it, ``benchmarks/fluo_error.py``).

Training records the choice in the model (``ScoringConfig.error``) with its reason
(``provenance["error_choice"]``); any explicit ``ScoringConfig(error=...)`` overrides it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .preprocessing import Preprocessing

__all__ = ["AUTO", "CHANNELS_ERROR", "choose_error"]

#: ``ScoringConfig.error`` value that asks training to choose.
AUTO = "auto"
#: The error for images that are not RGB brightfield.
CHANNELS_ERROR = "mse"
#: At most this many training images are looked at to decide brightfield or fluorescence.
_KIND_SAMPLE = 8
#: RGB images whose non-black pixels are mostly dark (median over the images looked at) are
#: taken as fluorescence composites.
_DARK_FRACTION = 0.5


def choose_error(prep: Preprocessing, images: Sequence[np.ndarray]) -> tuple[str, str]:
    """The error kind for a model with preprocessing ``prep`` trained on ``images``.

    Parameters
    ----------
    prep : Preprocessing
        The model's channel layout (only ``"rgb"`` can get ``"lab"``).
    images : sequence of numpy.ndarray
        Raw training images (the first :data:`_KIND_SAMPLE`, evenly spread, are looked at).

    Returns
    -------
    (str, str)
        The error kind (``"lab"`` or :data:`CHANNELS_ERROR`) and a short reason, e.g.
        ``"RGB brightfield images"``.
    """
    if prep.channels != "rgb":
        what = {"gray": "grayscale images"}.get(prep.channels,
                                                f"{prep.n_channels}-channel images")
        return CHANNELS_ERROR, what
    step = max(1, len(images) // _KIND_SAMPLE)
    dark = [_dark_fraction(np.asarray(im)) for im in list(images)[::step][:_KIND_SAMPLE]]
    if float(np.median(dark)) > _DARK_FRACTION:
        return CHANNELS_ERROR, "RGB fluorescence images (mostly dark)"
    return "lab", "RGB brightfield images"


def _dark_fraction(image: np.ndarray) -> float:
    """Fraction of the not-pure-black pixels of an RGB(A) image whose luminosity is below a
    quarter of the full range (255 for ``uint8``, else the image's maximum)."""
    rgb = image[..., :3].reshape(-1, 3).astype(np.float32)
    full = 255.0 if image.dtype == np.uint8 else max(float(rgb.max()), 1e-12)
    rgb = rgb[rgb.max(axis=1) > 0]
    if rgb.size == 0:
        return 1.0
    lum = rgb @ np.array([0.21, 0.72, 0.07], dtype=np.float32)
    return float(np.mean(lum < 0.25 * full))
