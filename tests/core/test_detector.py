"""Tests for ``napari_cell_anomaly.core.detector``.

Detection quality is measured on the project's synthetic cells with planted anomalies, using
the session-scoped ``cell_detector`` (see ``tests/conftest.py`` for why it is trained as it is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cell_anomaly.core import mappass
from napari_cell_anomaly.core.detector import AnomalyDetector, ScoreResult
from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.mappass import foreground_mask, window_origins
from napari_cell_anomaly.core.metrics import image_auroc, pixel_auroc
from napari_cell_anomaly.core.modelfile import ModelFileError
from napari_cell_anomaly.core.sample import make_field
from napari_cell_anomaly.core.tiling import PredictionStopped, predict_tiled

# -------------------------------------------------------------------------------------------
# detection quality
# -------------------------------------------------------------------------------------------


def test_default_detector_separates_planted_anomalies(cells, cell_results) -> None:
    auroc = image_auroc(cells.test.labels, [r.score for r in cell_results])
    assert auroc > 0.9


def test_error_map_is_hotter_inside_planted_masks(cells, cell_results) -> None:
    assert pixel_auroc(cells.test.masks, [r.error_map for r in cell_results]) > 0.9
    # Hot where the stains are: on stain pixels the map is several times its average level.
    pairs = [(r, m) for r, m in zip(cell_results, cells.test.masks, strict=True) if m.any()]
    assert len(pairs) == cells.test.labels.sum()
    inside = np.mean([r.error_map[m].mean() for r, m in pairs])
    overall = np.mean([r.error_map.mean() for r in cell_results])
    assert inside > 3 * overall


def test_calibrated_rates_hold_on_unseen_images(cell_detector, cells) -> None:
    # Thresholds come from 32 held-out calibration crops (10 % of 320; another 32 chose the
    # checkpoint). At fpr = 0.2 the threshold is their 27th of 32 scores (conformal rank
    # ceil(33 * 0.8)), whose exceedance on new normals is Beta(6, 27)-distributed (mean 0.18,
    # sd 0.07); with binomial noise on 60 normals (sd ~0.05) the false-alarm rate stays below
    # 0.5 unless the calibration is grossly wrong (about 3 sd).
    normals = [cell_detector.score(im, fpr=0.2) for im in cells.normals.images]
    false_alarms = float(np.mean([r.is_anomaly for r in normals]))
    assert false_alarms < 0.5
    anomalies = [im for im, lab in zip(cells.test.images, cells.test.labels, strict=True) if lab]
    hits = float(np.mean([cell_detector.score(im, fpr=0.05).is_anomaly for im in anomalies]))
    assert hits >= 0.8  # measured 1.0


# -------------------------------------------------------------------------------------------
# result contract
# -------------------------------------------------------------------------------------------


def _check_result(res: ScoreResult, hw: tuple[int, int], channels: int) -> None:
    assert res.error_map.shape == hw
    # The 1-SSIM map is computed only when the error uses it (not for the default "lab").
    maps = [res.error_map, res.reconstruction]
    if res.ssim_map is not None:
        assert res.ssim_map.shape == hw
        maps.append(res.ssim_map)
    assert res.reconstruction.shape == (*hw, channels)
    for a in maps:
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert res.error_map.min() >= 0
    assert 0.0 <= res.reconstruction.min() and res.reconstruction.max() <= 1.0
    assert all(np.isfinite([res.score, res.recon_error, res.log_density, res.threshold]))
    assert 0.0 <= res.percentile <= 100.0
    assert res.is_anomaly == (res.score > res.threshold)
    assert res.n_windows >= 1
    row = res.as_row()
    assert row["score"] == res.score and row["is_anomaly"] in (0, 1)


@pytest.mark.parametrize("hw", [(64, 64), (50, 70), (129, 33), (8, 8)])
def test_whole_mode_maps_have_the_input_size(cell_detector, cells, hw) -> None:
    from skimage.transform import resize

    img = resize(cells.test.images[0], hw, preserve_range=True).astype(np.uint8)
    _check_result(cell_detector.score(img), hw, 3)


@pytest.mark.parametrize("hw", [(64, 64), (250, 270), (100, 391)])
def test_patch_mode_maps_have_the_input_size(patch_detector, hw) -> None:
    img, _ = make_field((400, 400), seed=5)
    res = patch_detector.score(img[: hw[0], : hw[1]])
    _check_result(res, hw, 3)
    # The image is judged on its model-size windows.
    assert res.n_windows == len(window_origins(*hw, patch_detector.size))


def test_rgba_inputs_score_like_rgb_and_channels_first_needs_channel_axis(
        cell_detector, cells) -> None:
    rgb = cells.test.images[1]
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
    ref = cell_detector.score(rgb)
    assert cell_detector.score(rgba).score == ref.score
    # (3, H, W) could be channels or three planes: refused until the caller says which.
    first = np.moveaxis(rgb, -1, 0)
    with pytest.raises(ImageError, match="channel_axis"):
        cell_detector.score(first)
    assert cell_detector.score(np.moveaxis(first, 0, -1)).score == ref.score


def test_score_agrees_with_calibration(cell_detector, cell_results) -> None:
    cal = cell_detector.calibration
    for res in cell_results[:10]:
        assert res.n_windows == 1
        assert res.score == pytest.approx(float(cal.combine(res.recon_error, res.log_density)))
        assert res.percentile == pytest.approx(float(cal.percentile(res.score)[0]))
        assert res.threshold == cal.threshold(0.05)
        crit = cal.criteria(0.05)
        or_rule = res.recon_error > crit["recon_error"] or res.log_density < crit["log_density"]
        assert res.is_anomaly == or_rule


def test_fpr_changes_the_verdict_but_not_the_score(cell_detector, cells, cell_results) -> None:
    cal = cell_detector.calibration
    strict, loose = 0.01, 0.9
    t_strict, t_loose = cal.threshold(strict), cal.threshold(loose)
    assert t_strict > t_loose
    # An image whose score lies between the two thresholds.
    idx = next(i for i, r in enumerate(cell_results) if t_loose < r.score <= t_strict)
    image = cells.test.images[idx]
    a = cell_detector.score(image, fpr=strict)
    b = cell_detector.score(image, fpr=loose)
    assert a.score == b.score and a.recon_error == b.recon_error
    assert a.log_density == b.log_density and a.percentile == b.percentile
    assert np.array_equal(a.error_map, b.error_map)
    assert (a.is_anomaly, b.is_anomaly) == (False, True)
    assert (a.threshold, b.threshold) == (t_strict, t_loose)
    # More tolerance for false alarms never turns fewer images anomalous.
    flags = {f: sum(cell_detector.score(im, fpr=f).is_anomaly
                    for im in cells.test.images[:20]) for f in (0.01, 0.1, 0.5)}
    assert flags[0.01] <= flags[0.1] <= flags[0.5]
    with pytest.raises(ValueError, match="false-alarm rate"):
        cell_detector.score(image, fpr=1.0)


def test_iter_scores_matches_score(cell_detector, cells) -> None:
    images = cells.test.images[:4]
    results = list(cell_detector.iter_scores(images, fpr=0.2))
    assert [r.score for r in results] == [cell_detector.score(im).score for im in images]
    assert all(r.threshold == cell_detector.calibration.threshold(0.2) for r in results)


def test_summary_mentions_the_essentials(cell_detector) -> None:
    text = cell_detector.summary()
    assert "RGB" in text and "whole mode" in text and "64 px" in text
    assert str(cell_detector.calibration.size) in text
    assert cell_detector.describe_rate(0.05) in text
    assert f"calibrated on {cell_detector.calibration.size} normals" in text


def test_summary_says_what_its_counts_count(cell_detector, patch_detector,
                                            cells_detector) -> None:
    for det, train, held in ((cell_detector, "", ""), (patch_detector, " images", " windows"),
                             (cells_detector, " cells", " cells")):
        p = det.provenance
        # Patch mode trains on images but holds out windows: the line names both.
        assert (f"on {p['n_images']} images ({p['n_train']}{train} for training, "
                f"{p['n_val']}{held} held out for checkpoint choice, "
                f"{p['n_calibration']} for calibration)") in det.summary(), det.mode


def test_cells_summary_names_rejected_cells_and_all_three_criteria(cell_fields,
                                                                   tmp_path: Path) -> None:
    from napari_cell_anomaly.core.training import TrainConfig, run_training

    # A low cut so that this short robust run certainly rejects some cells (contract test).
    det = run_training([f.image for f in cell_fields], TrainConfig(
        max_steps=4, epochs=30, robust=True, reject_z=0.5, reject_nu=0.1),
        labels=[f.labels for f in cell_fields])
    n_cells = det.provenance["cells"]["rejected_cells"]
    assert det.mode == "cells" and n_cells > 0 and det.rejected
    crit = det.calibration.criteria(0.05)
    det.save(tmp_path / "m.safetensors")
    for text in (det.summary(), AnomalyDetector.load(tmp_path / "m.safetensors").summary()):
        # Cells are rejected, not the fields that hold them.
        assert (f"rejected {n_cells} training cells (in {len(det.rejected)} of the training "
                "images)") in text
        assert "training images\n" not in text + "\n"
        # A cell is anomalous past any of its three thresholds; the summary names all three.
        assert (f"error > {crit['recon_error']:.4g} or log-density < "
                f"{crit['log_density']:.4g} or shape log-density < "
                f"{crit['shape_log_density']:.4g}") in text


def test_evaluate_reports_the_observed_false_alarm_rate(cell_detector, cells) -> None:
    from napari_cell_anomaly.core.evaluation import evaluate

    normals = cells.normals.images
    anomalies = [im for im, lab in zip(cells.test.images, cells.test.labels, strict=True) if lab]
    report = evaluate(cell_detector, normals, anomalies, fpr=0.2)
    flagged = sum(cell_detector.score(im, fpr=0.2).is_anomaly for im in normals)
    assert report["nominal_fpr"] == 0.2
    assert report["observed_false_alarms"] == flagged
    assert report["observed_fpr"] == pytest.approx(flagged / len(normals))
    lo, hi = report["observed_fpr_ci95"]
    assert lo <= report["observed_fpr"] <= hi and hi - lo < 0.5
    nlo, nhi = report["nominal_fpr_range95"]
    assert nlo < 0.2 < nhi
    assert report["stated_fpr_interval95"] == list(cell_detector.calibration.rate_interval(0.2))
    assert report["calibration"].startswith("20% false alarms")


# -------------------------------------------------------------------------------------------
# bad inputs
# -------------------------------------------------------------------------------------------


def _bad_inputs() -> list[tuple[str, np.ndarray, str]]:
    good = make_field((96, 96), seed=1)[0]
    nan = good.astype(np.float32)
    nan[10, 10, 0] = np.nan
    inf = good.astype(np.float32)
    inf[5, 7, 2] = np.inf
    return [
        ("1x1", np.zeros((1, 1, 3), np.uint8), "1x1 pixels"),
        ("1x1-gray", np.array([[7]], np.uint8), "1x1 pixels"),
        ("nan", nan, "NaN or infinite"),
        ("inf", inf, "NaN or infinite"),
        ("constant", np.full((64, 64, 3), 200, np.uint8), "constant"),
        ("stack", np.stack([good[..., 0]] * 5), "3-D stack"),
        ("4-D", good[None], "4-D array"),
        ("gray-to-rgb", good[..., 0], "expects RGB"),
        ("strings", np.array([["x"] * 16] * 16), "dtype"),
    ]


@pytest.mark.parametrize("which", ["cell_detector", "patch_detector"])
@pytest.mark.parametrize(("name", "image", "match"), _bad_inputs(),
                         ids=[b[0] for b in _bad_inputs()])
def test_bad_inputs_raise_one_line_image_error(request, which, name, image, match) -> None:
    det = request.getfixturevalue(which)
    with pytest.raises(ImageError, match=match) as err:
        det.score(image, name="cell.png")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 200
    assert "cell.png" in msg


def test_patch_mode_refuses_images_smaller_than_its_window(patch_detector) -> None:
    small = make_field((96, 96), seed=2)[0][:40, :90]
    with pytest.raises(ImageError, match=r"40x90 pixels.*at least 64") as err:
        patch_detector.score(small, name="crop.tif")
    assert "crop.tif" in str(err.value) and "\n" not in str(err.value)


def test_patch_scoring_can_be_stopped_and_an_unused_stop_changes_nothing(patch_detector) -> None:
    img = make_field((256, 320), seed=4)[0]
    calls: list[int] = []

    def stop_on(n: int):
        def stop() -> bool:
            calls.append(1)
            return len(calls) >= n
        return stop

    # 1st call: before the (single) batch of tiles; 2nd: before the first batch of windows.
    for n in (1, 2):
        calls.clear()
        with pytest.raises(PredictionStopped):
            patch_detector.score(img, stop=stop_on(n))
        assert len(calls) == n
    calls.clear()
    never = patch_detector.score(img, stop=stop_on(10**6))
    plain = patch_detector.score(img)
    assert len(calls) >= 2 and never.score == plain.score
    np.testing.assert_array_equal(never.error_map, plain.error_map)


# -------------------------------------------------------------------------------------------
# tiling
# -------------------------------------------------------------------------------------------


def test_tiled_scoring_equals_untiled(patch_detector, monkeypatch) -> None:
    # 250 x 270 fits in one 512 tile (one network call) ...
    img, _ = make_field((250, 270), n_cells=25, anomaly_fraction=0.3, seed=4)
    one = patch_detector.score(img)
    # ... and with 128-pixel tiles (margin 32, more than the ~28-pixel receptive field of the
    # network plus the SSIM and smoothing windows) the image, padded to 256 x 272, is cut into
    # 3 x 4 overlapping tiles of at most 128 px (shrunk to the least side needing no more).
    shapes: list[tuple[int, ...]] = []
    hook = patch_detector.network.decoder.register_forward_pre_hook(
        lambda _m, inputs: shapes.append(tuple(inputs[0].shape)))
    monkeypatch.setattr(mappass, "TILE", 128)
    try:
        tiled = patch_detector.score(img)
    finally:
        hook.remove()
    a = patch_detector.network.align
    assert sum(s[0] for s in shapes) == 3 * 4
    assert all(s[2] <= 128 // a and s[3] <= 128 // a for s in shapes)
    np.testing.assert_allclose(tiled.reconstruction, one.reconstruction, atol=2e-5)
    np.testing.assert_allclose(tiled.error_map, one.error_map, rtol=1e-4, atol=1e-6)
    if one.ssim_map is not None:
        np.testing.assert_allclose(tiled.ssim_map, one.ssim_map, atol=2e-5)
    assert tiled.score == pytest.approx(one.score, rel=1e-4, abs=1e-5)
    assert tiled.is_anomaly == one.is_anomaly


def test_network_through_predict_tiled_equals_one_pass(patch_detector) -> None:
    net = patch_detector.network
    img, _ = make_field((200, 232), seed=6)
    chw = np.ascontiguousarray(patch_detector.preprocessing(img).transpose(2, 0, 1))
    with torch.inference_mode():
        whole = net(torch.from_numpy(chw)[None].contiguous(
            memory_format=torch.channels_last))[0].numpy()
    tiled = predict_tiled(net, chw, tile=96, margin=32, align=net.align, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_window_origins_cover_the_image() -> None:
    assert window_origins(64, 64, 64) == [(0, 0)]
    origins = window_origins(150, 100, 64)
    rows = sorted({r for r, _ in origins})
    cols = sorted({c for _, c in origins})
    assert rows == [0, 64, 86] and cols == [0, 36]
    covered = np.zeros((150, 100), bool)
    for r, c in origins:
        covered[r:r + 64, c:c + 64] = True
    assert covered.all()


def test_foreground_mask_finds_the_cell(cells) -> None:
    img = cells.train.images[0].astype(np.float32) / 255.0
    mask = foreground_mask(img)
    assert mask.shape == img.shape[:2]
    assert not mask[0].any() and not mask[:, 0].any()  # black border is background
    assert 0.2 < mask.mean() < 0.8
    assert mask[32, 32] or mask[28:36, 28:36].any()


# -------------------------------------------------------------------------------------------
# persistence
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["cell_detector", "patch_detector"])
def test_saved_model_round_trips_to_identical_scores(request, which, tmp_path: Path,
                                                     cells) -> None:
    det = request.getfixturevalue(which)
    path = tmp_path / "model.safetensors"
    det.save(path)
    back = AnomalyDetector.load(path)
    assert back.mode == det.mode and back.size == det.size
    assert back.preprocessing == det.preprocessing and back.scoring == det.scoring
    assert back.network.config == det.network.config
    assert back.rejected == det.rejected
    assert back.summary() == det.summary()
    images = ([*cells.test.images[:3]] if det.mode == "whole"
              else [make_field((160, 200), seed=8)[0]])
    for im in images:
        a, b = det.score(im), back.score(im)
        assert (a.score, a.recon_error, a.log_density, a.percentile, a.is_anomaly) == (
            b.score, b.recon_error, b.log_density, b.percentile, b.is_anomaly)
        assert np.array_equal(a.error_map, b.error_map)
        assert np.array_equal(a.reconstruction, b.reconstruction)


def test_tampered_model_file_is_refused(cell_detector, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    cell_detector.save(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one bit of one stored number
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="modified or corrupted") as err:
        AnomalyDetector.load(tampered)
    assert "\n" not in str(err.value)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelFileError, match="truncated"):
        AnomalyDetector.load(truncated)
    with pytest.raises(ModelFileError):
        AnomalyDetector.load(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def tiny_detectors() -> dict[str, AnomalyDetector]:
    """One briefly trained detector per latent density kind (same images, same seed)."""
    from napari_cell_anomaly.core.sample import make_cells
    from napari_cell_anomaly.core.scoring import DENSITY_KINDS, ScoringConfig
    from napari_cell_anomaly.core.training import TrainConfig, run_training

    images = make_cells(24, size=32, seed=4).images
    return {kind: run_training(images, TrainConfig(size=32, max_steps=2, batch_size=8,
                                                   scoring=ScoringConfig(density=kind)))
            for kind in DENSITY_KINDS}


@pytest.mark.parametrize("kind", ["kde", "gmm", "kde-flat"])
def test_each_density_round_trips_exactly_through_a_model_file(
        tiny_detectors, kind: str, tmp_path: Path) -> None:
    from napari_cell_anomaly.core import density as density_mod
    from napari_cell_anomaly.core.modelfile import load_file
    from napari_cell_anomaly.core.sample import make_cells

    det = tiny_detectors[kind]
    expected_type = {"kde": density_mod.LocalLatentKDE, "gmm": density_mod.LocalLatentDensity,
                     "kde-flat": density_mod.LatentDensity}[kind]
    assert det.scoring.density == kind and isinstance(det.density, expected_type)
    path = tmp_path / f"{kind}.safetensors"
    det.save(path)
    _, meta = load_file(path)
    assert meta["scoring"]["density"] == kind  # the file records the kind by name
    back = AnomalyDetector.load(path)
    assert back.scoring == det.scoring and type(back.density) is type(det.density)
    arrays, back_arrays = det.density.to_arrays(), back.density.to_arrays()
    assert arrays.keys() == back_arrays.keys()
    assert all(np.array_equal(arrays[k], back_arrays[k]) for k in arrays)
    for im in make_cells(4, size=32, anomaly_fraction=0.5, seed=5).images:
        a, b = det.score(im), back.score(im)
        assert (a.score, a.log_density, a.percentile) == (b.score, b.log_density, b.percentile)


@pytest.mark.parametrize(("old_name", "kind"),
                         [("local", "gmm"), ("kde", "kde-flat"), (None, "kde-flat")])
def test_old_model_files_load_and_score_as_before(tiny_detectors, old_name: str | None,
                                                  kind: str, tmp_path: Path) -> None:
    from napari_cell_anomaly.core.modelfile import load_file, save_file
    from napari_cell_anomaly.core.sample import make_cells

    det = tiny_detectors[kind]
    path = tmp_path / "new.safetensors"
    det.save(path)
    tensors, meta = load_file(path)
    # Rewrite the file as versions before the density names' version 2 wrote it.
    del meta["scoring"]["density_names"]
    if old_name is None:
        del meta["scoring"]["density"]
    else:
        meta["scoring"]["density"] = old_name
    old = tmp_path / "old.safetensors"
    save_file(old, tensors, meta)
    back = AnomalyDetector.load(old)
    assert back.scoring.density == kind and type(back.density) is type(det.density)
    for im in make_cells(3, size=32, anomaly_fraction=0.5, seed=6).images:
        a, b = det.score(im), back.score(im)
        assert (a.score, a.log_density, a.is_anomaly) == (b.score, b.log_density, b.is_anomaly)

