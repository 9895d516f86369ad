"""The shipped default model: present, loadable, and still good on real cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cell_anomaly.core.detector import AnomalyDetector, default_model_path
from napari_cell_anomaly.core.images import find_images, load_images
from napari_cell_anomaly.core.metrics import image_auroc

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "malaria" / "val"


def test_default_model_ships_and_describes_itself() -> None:
    path = default_model_path()
    assert path is not None, "models/default.safetensors is missing from the package"
    assert path.stat().st_size < 5 * 2**20
    det = AnomalyDetector.load(path)
    assert det.channels == "rgb"
    assert det.provenance["n_images"] == 2500
    assert "2500 images" in det.summary()


@pytest.mark.skipif(not VAL.is_dir(), reason="real malaria data (../shared/data) not present")
def test_default_model_separates_parasitized_cells() -> None:
    det = AnomalyDetector.load(default_model_path())
    normal = load_images(find_images(VAL / "Uninfected")[:150]).images
    infected = load_images(find_images(VAL / "Parasitized")[:150]).images
    scores = [det.score(im).score for im in normal + infected]
    labels = np.r_[np.zeros(len(normal), bool), np.ones(len(infected), bool)]
    # models/README.md reports 0.973 on all 1,200 val images; a 300-image subset must stay
    # well above the 0.93 of the hand-made green-channel baseline.
    assert image_auroc(labels, scores) > 0.94


def test_default_model_refuses_the_plugins_own_field_sample() -> None:
    """The 512 x 512 sample field is under 4x the shipped model's crops (130 px) but holds
    dozens of cells: scored whole it would be squeezed into 64 px, so it is refused."""
    from napari_cell_anomaly._sample_data import anomalous_cells
    from napari_cell_anomaly.core.images import ImageError

    det = AnomalyDetector.load(default_model_path())
    field = anomalous_cells()[0][0]
    assert max(field.shape[:2]) < 4 * det.trained_side()
    with pytest.raises(ImageError, match=r"holds about \d+ cells.*score it per cell"):
        det.score(field)


@pytest.mark.skipif(not VAL.is_dir(), reason="real malaria data (../shared/data) not present")
def test_default_model_scores_large_single_cell_crops() -> None:
    """Crops of one cell over twice the median training side are still scored whole."""
    det = AnomalyDetector.load(default_model_path())
    crops = load_images(find_images(VAL / "Parasitized") + find_images(VAL / "Uninfected"))
    large = [im for im in crops.images if max(im.shape[:2]) > 2 * det.trained_side()]
    assert large, "expected a few malaria crops over twice the median side"
    assert all(np.isfinite(det.score(im).score) for im in large)
