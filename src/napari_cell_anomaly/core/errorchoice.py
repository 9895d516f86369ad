"""Which per-pixel error a model scores with, chosen from the kind of its training images.

CIE L*a*b* (``error="lab"``) is a perceptual colour space for sRGB pictures: it earned its
place on RGB brightfield smears (stained cells on a bright background). It does not belong on
fluorescence or on arbitrary channel sets, where it would apply the sRGB gamma to normalised
intensities (and it needs 1 or 3 channels). :func:`choose_error` therefore picks

- ``"lab"`` for RGB images whose majority is brightfield (:func:`.cells.image_kind`);
- :data:`CHANNELS_ERROR` for everything else (grayscale, fluorescence, any number of
  channels): an error on the normalised channel intensities (see ``docs/benchmarks.md`` for
  the measurement behind it, ``benchmarks/fluo_error.py``).

Training records the choice in the model (``ScoringConfig.error``) with its reason
(``provenance["error_choice"]``); any explicit ``ScoringConfig(error=...)`` overrides it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .images import Preprocessing

__all__ = ["AUTO", "CHANNELS_ERROR", "choose_error"]

#: ``ScoringConfig.error`` value that asks training to choose.
AUTO = "auto"
#: The error for images that are not RGB brightfield.
CHANNELS_ERROR = "mse"
#: At most this many training images are looked at to decide brightfield or fluorescence.
_KIND_SAMPLE = 8


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
    from .cells import image_kind

    if prep.channels != "rgb":
        what = {"gray": "grayscale images"}.get(prep.channels,
                                                f"{prep.n_channels}-channel images")
        return CHANNELS_ERROR, what
    step = max(1, len(images) // _KIND_SAMPLE)
    kinds = [image_kind(np.asarray(im)[..., :3]) for im in list(images)[::step][:_KIND_SAMPLE]]
    if kinds.count("brightfield") * 2 > len(kinds):
        return "lab", "RGB brightfield images"
    return CHANNELS_ERROR, "RGB fluorescence images"
