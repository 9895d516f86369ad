"""Tests for ``napari_cell_anomaly.core.training``.

Every training here is a few optimisation steps on tiny synthetic data: these tests check the
loop's contract (events, stopping, determinism, modes, errors), not detection quality, which
``test_detector.py`` checks on the shared, briefly trained detector.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.sample import make_cells
from napari_cell_anomaly.core.scoring import ScoringConfig
from napari_cell_anomaly.core.training import (
    MID_RANGE,
    PATCH_MODE_FACTOR,
    TrainConfig,
    TrainProgress,
    choose_mode,
    reject_outliers,
    run_training,
    split_holdout,
    train,
)

#: A tiny whole-mode set: 44 crops -> 4 held out for validation and 4 for calibration, 36
#: trained -> 2 steps per epoch at batch 32.
SMALL = make_cells(44, size=32, seed=11).images


def _tiny(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"size": 32, "max_steps": 4, "epochs": 30}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _run(images, config, stop=None) -> tuple[list[TrainProgress], AnomalyDetector]:
    events: list[TrainProgress] = []
    gen = train(images, config, stop=stop)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value


def _assert_usable(det: AnomalyDetector, image: np.ndarray) -> None:
    res = det.score(image)
    assert np.isfinite(res.score) and np.isfinite(res.recon_error)
    assert np.isfinite(res.log_density)
    assert res.error_map.shape == image.shape[:2]
    assert np.all(np.isfinite(res.error_map))


def test_generator_yields_progress_and_returns_detector() -> None:
    events, det = _run(SMALL, _tiny(max_steps=5))
    assert isinstance(det, AnomalyDetector)
    assert all(isinstance(e, TrainProgress) for e in events)
    train_events = [e for e in events if e.phase == "train"]
    assert [e.step for e in train_events] == [1, 2, 3, 4, 5]
    assert all(e.steps == 5 for e in events)
    assert [e.phase for e in events[-2:]] == ["finalize", "done"]
    elapsed = [e.elapsed for e in events]
    assert all(b >= a for a, b in itertools.pairwise(elapsed))
    assert elapsed[0] > 0
    assert all(e.eta >= 0 for e in events) and events[-1].eta == 0.0
    assert all(np.isfinite(e.train_loss) and e.train_loss > 0 for e in train_events)
    # 2 steps per epoch: epochs 1, 1, 2, 2, 3 of a planned 3.
    assert [e.epoch for e in train_events] == [1, 1, 2, 2, 3]
    assert all(e.epochs == 3 for e in events)
    # A validation loss appears after the first epoch; the best one is kept.
    assert train_events[0].val_loss is None and train_events[2].val_loss is not None
    assert events[-1].best_val_loss == min(
        e.val_loss for e in events if e.val_loss is not None)
    assert not events[-1].stopped
    assert det.mode == "whole" and det.size == 32
    assert det.provenance["steps"] == 5 and det.provenance["n_images"] == len(SMALL)
    assert det.provenance["n_train"] + det.provenance["n_val"] + \
        det.provenance["n_calibration_images"] == len(SMALL)
    assert det.provenance["n_val"] == det.provenance["n_calibration"] == 4
    assert det.calibration.size == det.provenance["n_calibration"]
    _assert_usable(det, make_cells(1, size=32, seed=99).images[0])


def test_run_training_reports_the_same_events() -> None:
    seen: list[TrainProgress] = []
    det = run_training(SMALL, _tiny(max_steps=2), callback=seen.append)
    assert isinstance(det, AnomalyDetector)
    assert [e.phase for e in seen] == ["train", "train", "finalize", "done"]


def test_loss_decreases_with_training() -> None:
    events, _ = _run(SMALL, _tiny(max_steps=12, augment=False))
    losses = [e.train_loss for e in events if e.phase == "train"]
    assert np.mean(losses[-4:]) < np.mean(losses[:2])


@pytest.mark.parametrize("stop_after", [1, 3])
def test_stop_flag_ends_early_with_a_usable_detector(stop_after: int) -> None:
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > stop_after

    events, det = _run(SMALL, _tiny(max_steps=20), stop=stop)
    train_events = [e for e in events if e.phase == "train"]
    assert len(train_events) == stop_after
    assert events[-1].phase == "done" and events[-1].stopped
    assert det.provenance["stopped_early"] is True
    assert det.provenance["steps"] == stop_after
    _assert_usable(det, make_cells(1, size=48, anomaly_fraction=1.0, seed=5).images[0])


def test_same_seed_and_data_give_identical_models() -> None:
    image = make_cells(1, size=32, anomaly_fraction=1.0, seed=7).images[0]
    runs = [run_training(SMALL, _tiny(max_steps=4, seed=3)) for _ in range(2)]
    a, b = (r.network.state_dict() for r in runs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    da, db = (r.density.to_arrays() for r in runs)
    assert da.keys() == db.keys()
    assert all(np.array_equal(da[k], db[k]) for k in da)
    assert np.array_equal(runs[0].calibration.scores, runs[1].calibration.scores)
    ra, rb = (r.score(image) for r in runs)
    assert ra.score == rb.score and ra.log_density == rb.log_density
    assert np.array_equal(ra.error_map, rb.error_map)
    # A different seed gives a different model (the test above is not vacuous).
    other = run_training(SMALL, _tiny(max_steps=4, seed=4))
    first = next(k for k in a if k.endswith("weight"))  # the first convolution's weights
    assert not torch.equal(other.network.state_dict()[first], a[first])


def test_patch_mode_is_chosen_for_large_images(patch_detector: AnomalyDetector,
                                               field_images: list[np.ndarray]) -> None:
    assert choose_mode([im.shape for im in field_images], 64) == "patch"
    assert choose_mode([(PATCH_MODE_FACTOR * 64, 100, 3)], 64) == "whole"
    assert choose_mode([(PATCH_MODE_FACTOR * 64 + 1, 100, 3)], 64) == "patch"
    assert patch_detector.mode == "patch"
    assert patch_detector.provenance["train_config"]["mode"] == "auto"
    # Few large images: a bottom strip of each one is held out for calibration.
    assert patch_detector.calibration.size > 0
    image = field_images[0][:200, :300]
    _assert_usable(patch_detector, image)
    assert patch_detector.score(image).reconstruction.shape == (200, 300, 3)


def test_whole_mode_resizes_any_image_sizes() -> None:
    mixed = [np.asarray(im) for im in make_cells(12, size=40, seed=1).images]
    mixed += [np.asarray(im) for im in make_cells(12, size=24, seed=2).images]
    det = run_training(mixed, _tiny(max_steps=2))
    assert det.mode == "whole"
    _assert_usable(det, make_cells(1, size=56, seed=3).images[0])


def test_grayscale_training_and_channel_choice() -> None:
    gray = [im.mean(-1).astype(np.uint16) * 40 for im in SMALL]
    det = run_training(gray, _tiny(max_steps=2))
    assert det.channels == "gray" and det.network.config.in_channels == 1
    _assert_usable(det, gray[0])
    # An RGB image is converted to luminosity by a grayscale model.
    _assert_usable(det, SMALL[0])
    forced = run_training(SMALL, _tiny(max_steps=2, channels="gray"))
    assert forced.channels == "gray"


def test_no_images_raise_image_error() -> None:
    with pytest.raises(ImageError, match="no training images"):
        run_training([], _tiny())


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_images_raise_image_error(n: int) -> None:
    with pytest.raises(ImageError, match="at least") as err:
        run_training(SMALL[:n], _tiny(mode="whole"))
    assert "\n" not in str(err.value)


def _with_nan() -> list[np.ndarray]:
    images = [im.astype(np.float32) for im in SMALL[:8]]
    images[5][3, 4, 1] = np.nan
    return images


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (_with_nan(), "image 5.*NaN"),
        ([*SMALL[:6], np.full((32, 32, 3), 7, np.uint8)], "image 6.*constant"),
        ([*SMALL[:6], np.zeros((4, 32, 3), np.uint8)], "image 6.*4x32"),
        ([*SMALL[:6], np.zeros((5, 32, 32), np.uint8)], "image 6.*3-D stack"),
        ([*SMALL[:6], SMALL[0][..., 0]], "image 6.*grayscale"),
        ([*SMALL[:6], np.array([["a"] * 32] * 32)], "image 6.*dtype"),
    ],
    ids=["nan", "constant", "too-small", "stack", "gray-among-rgb", "strings"],
)
def test_bad_images_raise_image_error(images: list[np.ndarray], match: str) -> None:
    with pytest.raises(ImageError, match=match) as err:
        run_training(images, _tiny())
    assert "\n" not in str(err.value)


def test_whole_mode_refuses_a_field_among_crops() -> None:
    from napari_cell_anomaly.core.sample import make_field

    field = make_field((384, 384), n_cells=30, anomaly_fraction=0.0, seed=1)[0]
    with pytest.raises(ImageError, match=r"image 6 is 384x384 pixels, more than 4 times the "
                                         r"median side .*32 px.*squeezed") as err:
        run_training([*SMALL[:6], field, *SMALL[6:10]], _tiny(mode="whole"))
    assert "\n" not in str(err.value)


def test_patch_mode_rejects_images_smaller_than_the_patch() -> None:
    with pytest.raises(ImageError, match="at least 32 px") as err:
        run_training([*SMALL[:4], SMALL[0][:20]], _tiny(mode="patch"))
    assert "image 4" in str(err.value)


def test_robust_training_rejects_valid_training_indices() -> None:
    # 10 % contamination with planted anomalies, which robust training should tend to reject.
    data = make_cells(40, size=32, anomaly_fraction=0.1, seed=12)
    # The whole-code KDE keeps its training codes, so the exclusion of rejected ones is visible.
    # A low cut so that this short run certainly rejects some (contract test, not quality).
    events, det = _run(data.images, _tiny(robust=True, max_steps=6, reject_nu=0.1, reject_z=0.5,
                                          calibration_z=0.5,
                                          scoring=ScoringConfig(density="kde-flat")))
    assert isinstance(det, AnomalyDetector)
    rej = det.rejected
    assert isinstance(rej, list) and all(isinstance(i, int) for i in rej)
    assert len(set(rej)) == len(rej)
    assert all(0 <= i < len(data.images) for i in rej)
    # Rejection happens among the training images: the calibration images are never rejected.
    assert len(rej) <= det.provenance["n_train"]
    assert events[-1].rejected == len(rej)
    assert len(rej) > 0  # z = 0.5 flags some training samples; nu = 0.1 caps how many
    assert len(rej) <= int(0.1 * det.provenance["n_train"])
    assert det.density.points.shape[0] == det.provenance["n_train"] - len(rej)
    # Robust calibration trims held-out outliers by the same rule, says how many, and counts
    # them as calibration normals above every threshold.
    n_dropped = det.provenance["calibration_dropped"]
    assert det.calibration.n_trimmed == n_dropped
    assert det.calibration.size == det.provenance["n_calibration"]
    assert det.calibration.errors.size == det.provenance["n_calibration"] - n_dropped
    _assert_usable(det, data.images[0])


def test_robust_training_rejects_mostly_the_anomalous_training_images() -> None:
    # 12 stained cells among 120; the plain autoencoder would learn to reconstruct them too.
    data = make_cells(120, size=32, anomaly_fraction=0.1, seed=3)
    det = run_training(data.images, TrainConfig(size=32, epochs=15, batch_size=16, robust=True))
    rej = np.asarray(det.rejected, dtype=int)
    labels = np.asarray(data.labels, dtype=bool)
    assert rej.size >= 4
    precision = labels[rej].mean()
    assert precision >= 0.75, (precision, labels.mean())  # base rate 0.1
    # Robust calibration does not throw away a large part of the held-out normals.
    assert det.provenance["calibration_dropped"] <= 2


def test_reject_outliers_uses_a_robust_log_scale_cut() -> None:
    rng = np.random.default_rng(0)
    errors = np.exp(rng.normal(0.0, 0.5, 500))  # log-normal normals: a long right tail
    errors[:10] *= 20.0  # 10 outliers
    rej = reject_outliers(errors, z=3.0, max_fraction=0.15)
    assert set(range(10)) <= set(rej.tolist())
    assert len(rej) <= 13  # at most a few normals beyond 3 robust SD of the log error
    assert len(reject_outliers(errors, z=3.0, max_fraction=0.01)) == 5  # capped
    assert len(reject_outliers(np.exp(rng.normal(0.0, 0.5, 500)), 3.0, 0.15)) <= 3


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="l1")
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainConfig(size=60)
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="tiles")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="resnet")
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=0.5)


def test_stop_before_the_first_step_raises_instead_of_returning_an_untrained_model() -> None:
    from napari_cell_anomaly.core.training import TrainingStopped

    data = make_cells(12, size=32, seed=0)
    with pytest.raises(TrainingStopped, match="before its first step"):
        run_training(data.images, TrainConfig(size=32, epochs=1), stop=lambda: True)


def test_split_holdout_keeps_groups_together_and_parts_disjoint() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), rng.integers(1, 6, 30))  # cells of 30 fields
    train_idx, val_idx, cal_idx = split_holdout(groups, 0.1, 0.2, rng)
    parts = [set(groups[i].tolist()) for i in (train_idx, val_idx, cal_idx)]
    assert [len(p) for p in parts] == [21, 3, 6]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([train_idx, val_idx, cal_idx]).tolist()) == \
        list(range(groups.size))
    # Plain counts: every unit its own group; at least one in each part.
    tr, va, ca = split_holdout(3, 0.1, 0.1, rng)
    assert (tr.size, va.size, ca.size) == (1, 1, 1)
    with pytest.raises(ValueError, match="at least 3"):
        split_holdout([0, 0, 1], 0.1, 0.1, rng)


def test_patch_calibration_measures_windows_as_scoring_does(
        patch_detector: AnomalyDetector, field_images: list[np.ndarray]) -> None:
    # Two 384 px fields: a 64-row validation strip and a 64-row calibration strip per field;
    # the calibration windows (6 per strip) are measured from the tiled map of the strip,
    # exactly as scoring measures the windows of an image.
    det = patch_detector
    assert det.provenance["holdout"] == "strips"
    assert det.calibration.size == det.provenance["n_calibration"] == 12
    strip = det.preprocessing(field_images[0])[-64:]
    res = det.analyse_field(strip)
    np.testing.assert_array_equal(det.calibration.errors[:6], res["recon_error"])
    np.testing.assert_array_equal(det.calibration.map_maxima[:6], res["map_max"])
    assert np.all(res["map_max"] <= res["error_map"].max())
    # The verdict's pixels are the eroded foreground, and outlines stay inside them.
    scored = det.score(field_images[0][:200, :300])
    assert scored.region is not None and 0 < scored.region.mean() < 1
    level = det.calibration.pixel_threshold(0.5, scored.n_windows)
    assert not (scored.anomaly_region(level) & ~scored.region).any()


def test_false_alarm_rate_holds_on_unseen_normals_end_to_end() -> None:
    # A small model with 200 calibration crops (40% of 500), tested on 500 fresh normals: the
    # observed rate must fall in the model's own 95% interval for its true rate, widened by
    # the test set's binomial noise (3 sd).
    det = run_training(make_cells(500, size=32, seed=21).images,
                       TrainConfig(size=32, max_steps=12, calibration_fraction=0.4, seed=2))
    assert det.calibration.size == 200
    fresh = make_cells(500, size=32, seed=22).images
    scores = np.array([det.score(im).score for im in fresh])
    for fpr in (0.05, 0.1, 0.2):
        lo, hi = det.calibration.rate_interval(fpr)
        observed = float(np.mean(scores > det.calibration.threshold(fpr)))
        noise = 3 * np.sqrt(hi * (1 - hi) / len(fresh))
        assert lo - noise <= observed <= hi + noise, (fpr, observed, lo, hi)


def test_dark_fluorescence_fields_are_reconstructed_not_flattened_to_black() -> None:
    # A mostly black 16-bit field: without a start at the dark mean the network settled on a
    # constant black output (reconstruction uncorrelated with the input).
    from napari_cell_anomaly.core.sample_fluo import make_fluo_field

    fields = [make_fluo_field((192, 192), n_nuclei=10, anomaly_fraction=0.0, seed=s).image
              for s in range(4)]
    det = run_training(fields, TrainConfig(epochs=2, seed=0, mode="patch"))
    x = det.preprocessing(fields[0])
    with torch.inference_mode():
        y = det.network(torch.from_numpy(x).permute(2, 0, 1)[None]).numpy()[0, 0]
    assert float(x.mean()) < MID_RANGE[0]  # the case the dark start is for
    assert np.corrcoef(x[..., 0].ravel(), y.ravel())[0, 1] > 0.5
