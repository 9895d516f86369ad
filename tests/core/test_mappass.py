"""The patch-mode map pass: one encoder pass per tile, only the maps that are used.

``AnomalyDetector.analyse_field`` reads each window's latent code from the tiled pass that
gives the maps (``ScoringConfig.window_codes == "field"``, new models) instead of encoding
every window again (``"crop"``, model files written before); the 1-SSIM map is computed only
when the error map uses it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_cell_anomaly.core import mappass
from napari_cell_anomaly.core.density import _log_kde
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.mappass import (
    encode_units,
    pack_codes,
    unpack_codes,
    window_origins,
)
from napari_cell_anomaly.core.sample import make_field
from napari_cell_anomaly.core.scoring import ScoringConfig


def _with(det: AnomalyDetector, **scoring: object) -> AnomalyDetector:
    return dataclasses.replace(det, scoring=dataclasses.replace(det.scoring, **scoring))


@pytest.mark.parametrize(("channels", "align"), [(8, 8), (16, 8), (3, 2), (4, 2)])
def test_pack_codes_round_trip_is_exact_on_whole_blocks(channels: int, align: int) -> None:
    torch.manual_seed(0)
    z = torch.randn(2, channels, 5, 7)
    plane = pack_codes(z, align)
    assert plane.shape == (2, 1, 5 * align, 7 * align)
    # the layout documented: channel j of position (i, k) at (i a + j // a, k a + j % a)
    pad = torch.zeros(2, align * align - channels, 5, 7)
    assert torch.equal(plane, torch.nn.functional.pixel_shuffle(torch.cat([z, pad], 1), align))
    # A plane cropped inside its last blocks (as for a side that is not a multiple of align)
    # gives back the codes of the whole blocks, bit for bit.
    cropped = plane[1, 0].numpy()[:5 * align - 1, :7 * align]
    codes = unpack_codes(cropped, align, channels)
    assert codes.shape == (channels, 4, 7)
    assert np.array_equal(codes, z[1, :, :4, :].numpy())
    with pytest.raises(ValueError, match="latent channels"):
        pack_codes(torch.zeros(1, align * align + 1, 2, 2), align)


def test_new_models_read_window_codes_from_the_map_pass(patch_detector) -> None:
    det = patch_detector
    assert det.scoring.window_codes == "field"
    net = det.network
    img, _ = make_field((200, 264), n_cells=20, anomaly_fraction=0.3, seed=3)
    x = det.preprocessing(img)
    calls = []
    # On the encoder's first layer (under a reduced precision the encoder runs layer by
    # layer: Autoencoder.encode keeps its last layer in float32).
    hook = net.encoder[0].register_forward_hook(
        lambda _m, inputs, _o: calls.append(inputs[0].shape))
    try:
        res = det.analyse_field(x)
    finally:
        hook.remove()
    # The image fits in one tile: one encoder call in all (none per window).
    assert len(calls) == 1
    # Each window's log-density is that of the latent block under it in the whole image's code.
    with torch.inference_mode(), det.autocast():  # in the precision the detector runs in
        z = net.encode(mappass.to_tensor(x[None]))[0].float().numpy()
    a, k = net.align, det.size // net.align
    windows = window_origins(*x.shape[:2], det.size)
    codes = np.stack([z[:, r // a:r // a + k, q // a:q // a + k].reshape(-1)
                      for r, q in windows])
    np.testing.assert_allclose(res["log_density"], det.density.log_density(codes),
                               rtol=1e-6, atol=1e-6)


def test_tiled_field_codes_equal_untiled(patch_detector, monkeypatch) -> None:
    img, _ = make_field((250, 270), n_cells=25, anomaly_fraction=0.3, seed=4)
    x = patch_detector.preprocessing(img)
    one = patch_detector.analyse_field(x)
    monkeypatch.setattr(mappass, "TILE", 128)
    tiled = patch_detector.analyse_field(x)
    np.testing.assert_allclose(tiled["log_density"], one["log_density"], rtol=1e-4, atol=1e-4)


def test_old_files_encode_each_window_as_before(patch_detector) -> None:
    # Files without window_codes score their windows' codes as they were calibrated: each
    # window encoded on its own.
    stored = patch_detector.scoring.to_dict()
    del stored["window_codes"]
    assert ScoringConfig.from_dict(stored).window_codes == "crop"
    assert ScoringConfig.from_dict(patch_detector.scoring.to_dict()).window_codes == "field"
    det = _with(patch_detector, window_codes="crop")
    img, _ = make_field((192, 256), n_cells=20, anomaly_fraction=0.3, seed=5)
    x = det.preprocessing(img)
    res = det.analyse_field(x)
    crops = np.stack([x[r:r + det.size, q:q + det.size]
                      for r, q in window_origins(*x.shape[:2], det.size)])
    np.testing.assert_allclose(res["log_density"],
                               det.density.log_density(encode_units(
                                   det.network, crops, precision=det.run_precision)),
                               rtol=1e-9, atol=1e-9)
    # Only the codes differ between the two: the maps are the same pass.
    new = patch_detector.analyse_field(x)
    np.testing.assert_array_equal(res["error_map"], new["error_map"])
    np.testing.assert_array_equal(res["recon_error"], new["recon_error"])


def test_ssim_map_only_when_the_error_uses_it(patch_detector) -> None:
    img, _ = make_field((128, 128), n_cells=10, seed=6)
    assert patch_detector.scoring.error == "lab"
    plain = patch_detector.score(img)
    assert plain.ssim_map is None
    ssim = _with(patch_detector, error="ssim").score(img)
    assert ssim.ssim_map is not None and ssim.ssim_map.shape == img.shape[:2]
    # With error "ssim" the heatmap is the smoothed 1-SSIM map itself.
    np.testing.assert_array_equal(ssim.error_map, ssim.ssim_map)
    assert not np.allclose(ssim.error_map, plain.error_map)


def test_kde_scoring_matches_a_direct_log_sum_exp() -> None:
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, 8))
    weights = rng.random(300)
    weights /= weights.sum()
    z = rng.standard_normal((1000, 8)) * np.r_[np.ones(900), np.full(100, 6.0)][:, None]
    h = 0.3
    d2 = ((z[:, None, :] - centres[None]) ** 2).sum(-1)
    ref = (logsumexp(np.log(weights) - d2 / (2 * h * h), axis=1)
           - 0.5 * 8 * np.log(2 * np.pi * h * h))
    np.testing.assert_allclose(_log_kde(z, centres, np.log(weights), h), ref, rtol=1e-10,
                               atol=1e-8)


def test_files_written_before_versions_load_and_score_as_before(patch_detector,
                                                                tmp_path) -> None:
    from napari_cell_anomaly.core.model import ModelConfig, build_model
    from napari_cell_anomaly.core.modelfile import load_file, save_file

    torch.manual_seed(1)
    v1 = build_model(ModelConfig(widths=(16, 32, 64), version=1)).eval()
    det = dataclasses.replace(_with(patch_detector, window_codes="crop"), network=v1)
    det.save(tmp_path / "new.safetensors")
    tensors, meta = load_file(tmp_path / "new.safetensors")
    # What a file of the previous version held: no model version, no window_codes.
    del meta["model"]["version"], meta["scoring"]["window_codes"]
    save_file(tmp_path / "old.safetensors", tensors, meta)
    old = AnomalyDetector.load(tmp_path / "old.safetensors", device="cpu")
    assert old.network.config.version == 1 and old.scoring.window_codes == "crop"
    img, _ = make_field((192, 200), n_cells=20, anomaly_fraction=0.3, seed=8)
    a, b = old.score(img), det.score(img)
    assert a.score == b.score and a.log_density == b.log_density
    np.testing.assert_array_equal(a.error_map, b.error_map)


def test_foreground_masks_of_a_batch_equal_one_at_a_time() -> None:
    from scipy import ndimage

    from napari_cell_anomaly.core.mappass import foreground_masks

    def one(x: np.ndarray, erode: int) -> np.ndarray:  # the per-image definition
        border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
        bg = np.median(border, axis=0)
        dist = np.sqrt(((x - bg) ** 2).sum(-1))
        mask = ndimage.binary_fill_holes(dist > 0.25 * max(float(dist.max()), 1e-6))
        return ndimage.binary_erosion(mask, iterations=erode) if erode else mask

    img, _ = make_field((256, 256), n_cells=30, anomaly_fraction=0.3, seed=9)
    x = img.astype(np.float32) / 255.0
    units = np.stack([x[r:r + 64, q:q + 64] for r, q in window_origins(256, 256, 64)])
    units[3] = 0.5  # a constant unit (empty mask)
    units[5, 20:40, 20:40] = 0.0  # a ring with a hole to fill
    units[5, 25:35, 25:35] = units[5, 0, 0]
    for erode in (0, 3):
        batch = foreground_masks(units, erode)
        for u, m in zip(units, batch, strict=True):
            np.testing.assert_array_equal(m, one(u, erode))
    assert batch.any() and not batch[3].any()
    assert batch[5, 30, 30] and not (units[5, 30, 30] != units[5, 0, 0]).any()  # hole filled
    for channels in (1, 2):  # other channel counts: the same per-image definition
        part = np.ascontiguousarray(units[..., :channels])
        for u, m in zip(part, foreground_masks(part, 2), strict=True):
            np.testing.assert_array_equal(m, one(u, 2))
