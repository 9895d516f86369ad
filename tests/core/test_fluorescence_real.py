"""Real fluorescence (``../shared/data/dsb2018-fluo``) through loading, normalisation and the
built-in segmentation, at 8 bits and as 16-bit camera counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cell_anomaly.core.images import read_image
from napari_cell_anomaly.core.preprocessing import Preprocessing
from napari_cell_anomaly.core.sample_fluo import DARK_OFFSET
from napari_cell_anomaly.core.segmentation import image_kind, segment_cells

DSB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dsb2018-fluo"
#: Two fields of different kinds: small bright nuclei (256 x 256), large dim ones (640 x 512).
STEMS = ("0280fa8f60f6bcae", "40b00d701695d8ea")

pytestmark = pytest.mark.skipif(not DSB.is_dir(),
                                reason="real dsb2018-fluo data (../shared/data) not present")


def _field(stem: str) -> tuple[np.ndarray, np.ndarray]:
    return (read_image(DSB / "images" / f"{stem}.png"),
            tifffile.imread(DSB / "labels" / f"{stem}_labels.tif"))


@pytest.mark.parametrize("stem", STEMS)
def test_16_bit_counts_segment_like_the_8_bit_image(stem: str) -> None:
    img, truth = _field(stem)
    assert img.ndim == 2 and img.dtype == np.uint8
    # the same scene recorded by a 12-bit camera with a dark offset, in a 16-bit container
    counts = img.astype(np.uint16) * 16 + DARK_OFFSET
    assert image_kind(img) == image_kind(counts) == "fluorescence"
    labels = segment_cells(img)
    np.testing.assert_array_equal(segment_cells(counts), labels)
    assert len(np.unique(labels)) - 1 >= 0.5 * (len(np.unique(truth)) - 1)


@pytest.mark.parametrize("stem", STEMS)
def test_16_bit_normalisation_puts_background_low_and_nuclei_high(stem: str) -> None:
    img, truth = _field(stem)
    counts = img.astype(np.uint16) * 16 + DARK_OFFSET
    prep = Preprocessing.fit([counts])
    assert prep.channels == "gray"
    assert DARK_OFFSET <= prep.low < prep.high <= int(counts.max())
    x = prep(counts)[..., 0]
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert np.median(x[truth == 0]) < 0.1
    assert np.median(x[truth > 0]) > 3 * max(np.median(x[truth == 0]), 0.02)
    # an affine change of the counts (another gain and offset) gives the same normalised image
    other = counts * 2 + 50
    np.testing.assert_allclose(Preprocessing.fit([other])(other)[..., 0], x, atol=1e-5)
