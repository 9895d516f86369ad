"""Devices: resolving specs, the runtime ``device`` keyword on every public path, and tensor
paths that stay on the network's device.

This machine has only a CPU, so a GPU is never exercised here. Two things stand in: an
explicit CPU device on every public path must give exactly the scores of the default, and the
network and error maps are run on PyTorch's ``meta`` device (tensors without data) under a
dispatch mode that records every operation mixing tensors of two devices, which is what a
CPU-only constant inside the maps would do on a GPU.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from napari_cell_anomaly.core import errormaps
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.device import DeviceError, describe_devices, resolve_device
from napari_cell_anomaly.core.modelfile import load_file
from napari_cell_anomaly.core.sample import make_cell_field, make_cells, make_field
from napari_cell_anomaly.core.scoring import ScoringConfig
from napari_cell_anomaly.core.training import TrainConfig, run_training, train

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
#: A tiny whole-mode training set (as in test_training.py): 4 steps of 32 crops.
SMALL = make_cells(44, size=32, seed=11).images


def _tiny(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"size": 32, "max_steps": 4, "epochs": 30}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _same_result(a, b) -> None:
    assert (a.score, a.recon_error, a.log_density, a.percentile, a.is_anomaly) == (
        b.score, b.recon_error, b.log_density, b.percentile, b.is_anomaly)
    assert np.array_equal(a.error_map, b.error_map)
    assert np.array_equal(a.reconstruction, b.reconstruction)


# -------------------------------------------------------------------------------------------
# resolve_device, describe_devices
# -------------------------------------------------------------------------------------------


def test_auto_picks_cuda_then_mps_then_the_cpu() -> None:
    auto = resolve_device("auto")
    assert resolve_device() == auto
    if HAS_CUDA:
        assert auto.type == "cuda" and auto.index is not None
    elif HAS_MPS:
        assert auto == torch.device("mps")
    else:  # this development machine
        assert auto == CPU


@pytest.mark.parametrize("spec", ["cpu", " CPU ", "cpu:0", CPU])
def test_cpu_specs(spec) -> None:
    assert resolve_device(spec) == CPU


@pytest.mark.parametrize("spec, present", [
    ("cuda", HAS_CUDA),
    ("cuda:0", HAS_CUDA),
    ("cuda:7", HAS_CUDA and torch.cuda.device_count() > 7),
    (torch.device("cuda"), HAS_CUDA),
    ("mps", HAS_MPS),
])
def test_an_absent_device_is_one_clear_line(spec, present: bool) -> None:
    if present:
        pytest.skip(f"this machine has {spec}")
    with pytest.raises(DeviceError) as info:
        resolve_device(spec)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith(f"{spec} requested but this machine has")
    assert ("CUDA" if "cuda" in str(spec) else "MPS") in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "", "xla", "meta", 0])
def test_an_unknown_spec_is_one_clear_line(spec) -> None:
    with pytest.raises(DeviceError) as info:
        resolve_device(spec)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert "expected auto, cpu, cuda, cuda:N or mps" in msg


def test_describe_devices_names_what_was_found() -> None:
    text = describe_devices()
    assert len(text.splitlines()) == 1
    assert text.startswith("devices found: cpu")
    assert f"auto picks {resolve_device('auto')}" in text
    assert ("cuda:0" in text) == HAS_CUDA
    assert torch.__version__ in text


# -------------------------------------------------------------------------------------------
# the device keyword on every public path
# -------------------------------------------------------------------------------------------


def test_training_on_an_explicit_device_gives_the_default_model() -> None:
    image = make_cells(1, size=32, anomaly_fraction=1.0, seed=7).images[0]
    default = run_training(SMALL, _tiny())
    explicit = run_training(SMALL, _tiny(), device=torch.device("cpu"))
    gen = train(SMALL, _tiny(), device="cpu")
    while True:
        try:
            next(gen)
        except StopIteration as done:
            by_generator = done.value
            break
    for det in (explicit, by_generator):
        assert det.device == CPU == default.device
        a, b = default.network.state_dict(), det.network.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert np.array_equal(default.calibration.scores, det.calibration.scores)
        _same_result(default.score(image), det.score(image))


def test_training_refuses_an_absent_device_before_any_work() -> None:
    events = []
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        run_training(SMALL, _tiny(), device="gpu", callback=events.append)
    assert events == []


@pytest.mark.parametrize("which", ["cell_detector", "patch_detector"])
def test_load_and_score_on_an_explicit_device(request, which: str, tmp_path: Path,
                                              cells) -> None:
    det = request.getfixturevalue(which)
    path = tmp_path / "model.safetensors"
    det.save(path)
    image = (cells.test.images[0] if det.mode == "whole"
             else make_field((160, 200), seed=8)[0])
    expected = det.score(image)
    for device in ("cpu", CPU, "auto"):
        back = AnomalyDetector.load(path, device=device)
        assert back.device == resolve_device(device)
        _same_result(expected, back.score(image))
    moved = AnomalyDetector.load(path)
    assert moved.to("cpu") is moved and moved.device == CPU
    _same_result(expected, moved.score(image))


def test_cells_paths_on_an_explicit_device(cells_detector, tmp_path: Path) -> None:
    field = make_cell_field((384, 384), n_cells=50, anomaly_fraction=0.3, seed=100)
    path = tmp_path / "cells.safetensors"
    cells_detector.save(path)
    back = AnomalyDetector.load(path, device=torch.device("cpu"))
    a = cells_detector.score_cells(field.image, field.labels)
    b = back.to("cpu").score_cells(field.image, field.labels)
    for k in a.table:
        assert np.array_equal(a.table[k], b.table[k]), k
    assert np.array_equal(a.error_map, b.error_map)
    (ra, _), (rb, _) = (d.score_field(field.image, field.labels)
                        for d in (cells_detector, back))
    _same_result(ra, rb)


def test_load_refuses_an_absent_device_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.safetensors"
    spec = "cuda:7" if not HAS_CUDA or torch.cuda.device_count() <= 7 else "gpu"
    with pytest.raises(DeviceError):
        AnomalyDetector.load(missing, device=spec)


def test_the_model_file_records_no_device(cell_detector, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    cell_detector.save(path)
    tensors, meta = load_file(path)

    def keys(node: object) -> list[str]:
        if isinstance(node, dict):
            return [str(k) for k in node] + [k for v in node.values() for k in keys(v)]
        if isinstance(node, list):
            return [k for v in node for k in keys(v)]
        return []

    assert not [k for k in keys(meta) if "device" in k.lower()]
    assert "device" not in json.dumps(meta["provenance"]["train_config"])
    assert all(isinstance(v, np.ndarray) for v in tensors.values())


# -------------------------------------------------------------------------------------------
# device-clean tensor paths
# -------------------------------------------------------------------------------------------


class _MixedDevices(TorchDispatchMode):
    """Records every operation that receives tensors (other than 0-d scalars, which PyTorch
    allows across devices) on more than one device."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            self.mixed.append(f"{func}: {sorted(map(str, devices))}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("error", ["mse", "lab", "ssim", "mix"])
def test_network_and_maps_stay_on_the_inputs_device(cell_detector, error: str) -> None:
    det = copy.copy(cell_detector)
    det.network = copy.deepcopy(cell_detector.network).to("meta")
    det.scoring = ScoringConfig(error=error)
    x = torch.rand(2, 3, 32, 32).to("meta")
    with _MixedDevices() as mode:
        y = det.network(x)
        se, dssim = det._maps(x, y)
        losses = [errormaps.reconstruction_loss(x, y, kind, torch.ones(2, device="meta"))
                  for kind in ("mse", "ssim", "mix")]
    assert mode.mixed == []
    assert {t.device.type for t in (y, se, dssim, *losses)} == {"meta"}
    assert se.shape == dssim.shape == (2, 1, 32, 32)


def test_the_mixed_device_check_can_fail() -> None:
    # A CPU kernel on a meta input: PyTorch lets this convolution through on the meta device
    # (as errormaps.gaussian_blur once did), while on a GPU it fails.
    x = torch.rand(1, 3, 8, 8).to("meta")
    with _MixedDevices() as mode:
        torch.nn.functional.conv2d(x, torch.ones(3, 1, 1, 3), groups=3)
    assert len(mode.mixed) == 1
