"""The network's precision: a runtime choice like the device (``precision="auto"|"fp32"|
"bf16"|"fp16"``), resolved from the hardware's own capability checks, bit-identical to the
plain float32 path when ``"fp32"``, and close to it in bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cell_anomaly._cli import arguments
from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core import mappass
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.device import (
    PRECISIONS,
    DeviceError,
    PrecisionError,
    autocast,
    describe_precision,
    resolve_precision,
)
from napari_cell_anomaly.core.metrics import image_auroc
from napari_cell_anomaly.core.modelfile import load_file
from napari_cell_anomaly.core.sample import make_cells, make_field
from napari_cell_anomaly.core.tiling import predict_tiled
from napari_cell_anomaly.core.training import TrainConfig, run_training

CPU = torch.device("cpu")
#: bf16 against fp32 on a briefly trained model: the error maps are within this absolute
#: difference (maps of these models reach about 0.1; bfloat16 keeps 8 bits of mantissa).
MAP_ATOL = 5e-3


def _cpu_bf16() -> bool:
    """PyTorch's own check of native bfloat16 on this CPU (what ``auto`` must follow)."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# -------------------------------------------------------------------------------------------
# resolving
# -------------------------------------------------------------------------------------------


def test_auto_follows_the_hardware_checks() -> None:
    assert resolve_precision("auto", "cpu") == ("bf16" if _cpu_bf16() else "fp32")
    if torch.cuda.is_available():
        major = torch.cuda.get_device_capability(0)[0]
        assert resolve_precision("auto", "cuda:0") == ("bf16" if major >= 8 else "fp32")
    assert describe_precision("cpu") == f"auto picks {resolve_precision('auto', 'cpu')} on cpu"


@pytest.mark.parametrize("spec, expect", [("fp32", "fp32"), (" BF16 ", "bf16"),
                                          ("bf16", "bf16")])
def test_explicit_specs_on_the_cpu(spec: str, expect: str) -> None:
    assert resolve_precision(spec, CPU) == expect


@pytest.mark.parametrize("spec, expect", [
    ("fp64", "unknown precision 'fp64'; expected auto, fp32, bf16 or fp16"),
    ("half", "unknown precision 'half'; expected auto, fp32, bf16 or fp16"),
    (None, "unknown precision None; expected auto, fp32, bf16 or fp16"),
    ("fp16", "precision fp16 needs a CUDA device; the network runs on cpu"),
])
def test_a_bad_precision_is_one_clear_line(spec, expect: str) -> None:
    with pytest.raises(PrecisionError) as err:
        resolve_precision(spec, "cpu")
    assert str(err.value) == expect
    assert isinstance(err.value, DeviceError) and isinstance(err.value, ValueError)


def test_cli_choices_are_the_core_ones() -> None:
    assert arguments.PRECISIONS == PRECISIONS


def test_the_latent_projection_stays_float32_under_autocast(cell_detector) -> None:
    net = cell_detector.network
    x = mappass.to_tensor(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
    with torch.inference_mode(), autocast(CPU, "bf16"):
        z = net.encode(x)
        inner = net.encoder[:-1](x)
        y = net.decode(z)
    assert inner.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert z.dtype == torch.float32


# -------------------------------------------------------------------------------------------
# fp32 is the plain float32 path, bit for bit
# -------------------------------------------------------------------------------------------


def _with_precision(det: AnomalyDetector, precision: str) -> AnomalyDetector:
    import copy

    other = copy.copy(det)
    other.precision = precision
    return other


def test_fp32_units_are_the_plain_forward_bit_for_bit(cell_detector, cells) -> None:
    det = _with_precision(cell_detector, "fp32")
    units = np.stack([det.preprocessing(im) for im in cells.test.images[:6]])
    res = det.analyse_units(units)
    with torch.inference_mode():
        x = mappass.to_tensor(units)
        z = det.network.encoder(x)  # no autocast anywhere: the code before precisions
        y = det.network.decoder(z)
        se, _ = det._maps(x, y, with_ssim=False)
    assert np.array_equal(res["codes"], z.flatten(1).numpy())
    assert np.array_equal(res["recon"], y.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(res["se_map"], se[:, 0].numpy())


def test_fp32_field_maps_are_the_plain_forward_bit_for_bit(patch_detector) -> None:
    det = _with_precision(patch_detector, "fp32")
    img, _ = make_field((200, 264), n_cells=20, anomaly_fraction=0.3, seed=3)
    x = det.preprocessing(img)
    res = det.analyse_field(x)
    net = det.network

    def plain(t: torch.Tensor) -> torch.Tensor:
        y = net.decoder(net.encoder(t))
        return torch.cat([y, det._maps(t, y, with_ssim=False)[0]], dim=1)

    out = predict_tiled(plain, x.transpose(2, 0, 1), tile=mappass.TILE,
                        margin=mappass.TILE_MARGIN, align=net.align)
    assert np.array_equal(res["recon"], out[:3].transpose(1, 2, 0))
    assert np.array_equal(res["error_map"], out[3])


# -------------------------------------------------------------------------------------------
# bf16 against fp32
# -------------------------------------------------------------------------------------------


def test_bf16_whole_mode_scores_agree_with_fp32(cell_detector, cells) -> None:
    images = cells.test.images
    fp32 = [_with_precision(cell_detector, "fp32").score(im) for im in images]
    bf16 = [_with_precision(cell_detector, "bf16").score(im) for im in images]
    for a, b in zip(fp32, bf16, strict=True):
        assert np.abs(a.error_map - b.error_map).max() < MAP_ATOL
        assert np.abs(a.reconstruction - b.reconstruction).max() < 2e-2
        assert b.recon_error == pytest.approx(a.recon_error, rel=0.05)
    # The same ranking of normal and anomalous crops, to within one pair in 50.
    labels = np.asarray(cells.test.labels, dtype=bool)
    auc = [image_auroc(labels, np.array([r.score for r in rs])) for rs in (fp32, bf16)]
    assert abs(auc[0] - auc[1]) <= 0.02


def test_bf16_field_maps_agree_with_fp32(patch_detector) -> None:
    img, _ = make_field((256, 320), n_cells=25, anomaly_fraction=0.3, seed=4)
    x = patch_detector.preprocessing(img)
    a = _with_precision(patch_detector, "fp32").analyse_field(x)
    b = _with_precision(patch_detector, "bf16").analyse_field(x)
    assert b["error_map"].dtype == np.float32 and b["recon"].dtype == np.float32
    assert np.abs(a["error_map"] - b["error_map"]).max() < MAP_ATOL
    # Each window's error (the image's verdict takes the worst window by the combined score,
    # whose latent density a 6-step model makes sensitive, so compare window by window).
    np.testing.assert_allclose(b["recon_error"], a["recon_error"], rtol=0.05)


# -------------------------------------------------------------------------------------------
# the keyword on every public path, never in the file
# -------------------------------------------------------------------------------------------


def test_load_to_and_training_take_the_precision(cell_detector, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    cell_detector.save(path)
    det = AnomalyDetector.load(path, device="cpu", precision="fp32")
    assert (det.precision, det.run_precision) == ("fp32", "fp32")
    assert AnomalyDetector.load(path).run_precision == resolve_precision("auto", "cpu")
    assert det.to("cpu", precision="bf16") is det and det.run_precision == "bf16"
    with pytest.raises(PrecisionError):
        det.to("cpu", precision="fp16")
    assert det.precision == "bf16"  # unchanged by the refused move
    with pytest.raises(PrecisionError):  # before the (missing) file is read
        AnomalyDetector.load(tmp_path / "missing.safetensors", precision="fp64")
    images = make_cells(44, size=32, seed=11).images
    trained = run_training(images, TrainConfig(size=32, max_steps=3, epochs=30),
                           precision="fp32")
    assert trained.precision == "fp32"
    assert trained.provenance["calibration_precision"] == "fp32"
    with pytest.raises(PrecisionError):
        run_training(images, TrainConfig(size=32, max_steps=3), precision="fp16")


def test_the_model_file_records_no_precision_setting(cell_detector, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    cell_detector.save(path)
    _, meta = load_file(path)
    settings = {k: v for k, v in meta.items() if k != "provenance"}
    assert "precision" not in json.dumps(settings)
    assert "precision" not in json.dumps(meta["provenance"]["train_config"])


def test_cli_takes_precision(cell_detector, cells, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from skimage.io import imsave

    model = tmp_path / "model.safetensors"
    cell_detector.save(model)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(cells.test.images[:6]):
        imsave(folder / f"c{i}.png", im, check_contrast=False)
    rows = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / f"{prec}.csv"
        assert main(["score", str(model), str(folder), "--csv", str(out), "--quiet",
                     "--device", "cpu", "--precision", prec]) == 0
        assert f"running on cpu in {prec}" in capsys.readouterr().err
        rows[prec] = np.genfromtxt(out, delimiter=",", names=True)
    assert np.allclose(rows["fp32"]["recon_error"], rows["bf16"]["recon_error"], rtol=0.05)
    expected = [r.recon_error for r in
                (_with_precision(cell_detector, "fp32").score(im) for im in cells.test.images[:6])]
    assert np.allclose(rows["fp32"]["recon_error"], expected, rtol=1e-5)
    assert main(["score", str(model), str(folder), "--csv", str(tmp_path / "x.csv"),
                 "--precision", "fp16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cell-anomaly: error: precision fp16 needs a CUDA device; the network runs "
                   "on cpu"]
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(SystemExit) as bad:
        main(["evaluate", str(model), "--normal", str(folder), "--anomalous", str(folder),
              "--precision", "fp64"])
    assert bad.value.code == 2
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def test_auto_is_fp32_for_cells_mode_models(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A cells-mode model's per-cell KDE is too sensitive to reduced-precision codes: auto
    runs it (and its training's calibration) in fp32 on every device; bf16 asked for
    explicitly is honoured; the CLI says and records what runs."""
    from skimage.io import imsave

    from napari_cell_anomaly.core.batchrecord import record_path
    from napari_cell_anomaly.core.sample import make_cell_field

    assert resolve_precision("auto", "cpu", "cells") == "fp32"
    assert resolve_precision("bf16", "cpu", "cells") == "bf16"
    assert resolve_precision("auto", "cpu", "patch") == resolve_precision("auto", "cpu")
    fields = [make_cell_field((192, 192), n_cells=14, seed=s, radius=(9.0, 12.0))
              for s in range(3)]
    det = run_training([f.image for f in fields], TrainConfig(max_steps=2, epochs=10),
                       labels=[f.labels for f in fields], precision="auto")
    assert det.mode == "cells" and det.run_precision == "fp32"
    assert det.provenance["calibration_precision"] == "fp32"
    model = tmp_path / "cells.safetensors"
    det.save(model)
    assert AnomalyDetector.load(model, device="cpu").run_precision == "fp32"
    assert AnomalyDetector.load(model, device="cpu", precision="bf16").run_precision == "bf16"
    image = tmp_path / "field.png"
    imsave(image, fields[0].image, check_contrast=False)
    out = tmp_path / "s.csv"
    assert main(["score", str(model), str(image), "--csv", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert "running on cpu in fp32" in capsys.readouterr().err
    assert json.loads(record_path(out).read_text())["precision"] == "fp32"
