"""Compute devices: where the network runs (a runtime choice, never stored in a model file).

A device is named by a short spec: ``"auto"`` (a CUDA GPU if there is one, else Apple's MPS,
else the CPU), ``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"`` or ``"mps"``; a
:class:`torch.device` is accepted as well. Only the network and its tensors live on the device;
latent densities and calibration stay in NumPy on the CPU, so a model trained on a GPU scores on
a CPU and the reverse.

The network's precision is a runtime choice too (:func:`resolve_precision`, :func:`autocast`):
``"auto"`` runs its forward in bfloat16 where the device computes it natively (a CPU with
AVX-512 BF16 or AMX by PyTorch's own check, a CUDA GPU of compute capability 8.0 or later),
else in float32; its outputs are cast back to float32 before anything is measured on them.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

#: The device specs accepted by :func:`resolve_device`, for help texts.
DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N", "mps")
_EXPECTED = "expected auto, cpu, cuda, cuda:N or mps"


class DeviceError(ValueError):
    """An unknown device spec, or a device this machine does not have; ``str(err)`` is one
    line saying what was asked for and what there is."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _torch_build() -> str:
    """``"torch 2.3.1, CUDA 12.1 build"`` or ``"torch 2.3.1, CPU build"``."""
    if torch.version.cuda:
        kind = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        kind = f"ROCm {torch.version.hip} build"
    else:
        kind = "CPU build"
    return f"torch {torch.__version__}, {kind}"


def _current_cuda() -> int:
    """The current CUDA device's index, without initialising CUDA (which costs seconds and
    GPU memory) when nothing has yet: it is then 0."""
    return torch.cuda.current_device() if torch.cuda.is_initialized() else 0


def _auto() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", _current_cuda())
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The :class:`torch.device` named by ``spec``, checked to exist on this machine.

    Parameters
    ----------
    spec : str or torch.device
        ``"auto"`` (CUDA, then Apple MPS, then the CPU), ``"cpu"``, ``"cuda"`` (the current
        CUDA device), ``"cuda:N"``, ``"mps"``, or a :class:`torch.device` of those types.
        Case and surrounding spaces are ignored.

    Returns
    -------
    torch.device
        ``cpu``, ``mps`` or ``cuda:N`` (always with its index).

    Raises
    ------
    DeviceError
        For an unknown spec (e.g. ``"gpu"``), or a device this machine lacks (``"cuda"`` on a
        machine without CUDA, ``"cuda:7"`` with fewer GPUs, ``"mps"`` off Apple silicon).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(spec, torch.device):
        dev, text = spec, str(spec)
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == "auto":
            return _auto()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise DeviceError(f"unknown device {spec!r}; {_EXPECTED}") from None
    else:
        raise DeviceError(f"unknown device {spec!r} ({type(spec).__name__}); {_EXPECTED}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{text} requested but this machine has no CUDA device "
                              f"({_torch_build()})")
        count = torch.cuda.device_count()
        index = _current_cuda() if dev.index is None else dev.index
        if index >= count:
            raise DeviceError(f"{text} requested but this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise DeviceError(f"{text} requested but this machine has no Apple MPS device "
                              f"({_torch_build()})")
        if dev.index not in (None, 0):
            raise DeviceError(f"{text} requested but there is only one MPS device (mps)")
        return torch.device("mps")
    raise DeviceError(f"unsupported device {text!r}; {_EXPECTED}")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for one with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def describe_devices() -> str:
    """One line on the devices found and what ``"auto"`` picks, for help texts and logs.

    It does not initialise CUDA, so GPU names are given only once something has.

    Examples
    --------
    ``"devices found: cpu, cuda:0 (NVIDIA H100 80GB HBM3); auto picks cuda:0
    (torch 2.3.1, CUDA 12.1 build)"``
    """
    named = torch.cuda.is_available() and torch.cuda.is_initialized()
    found = [f"{spec} ({torch.cuda.get_device_name(spec)})" if named and spec.startswith("cuda")
             else spec for spec in found_devices()]
    return f"devices found: {', '.join(found)}; auto picks {_auto()} ({_torch_build()})"


def found_devices() -> list[str]:
    """The specs of the devices on this machine: ``"cpu"``, then ``"cuda:N"`` for every CUDA
    device, then ``"mps"`` where there is one; each is accepted by :func:`resolve_device`.

    Examples
    --------
    >>> found_devices()[0]
    'cpu'
    """
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


# -- precision ------------------------------------------------------------------------------------
#: The precision specs accepted by :func:`resolve_precision`, for help texts.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(DeviceError):
    """An unknown precision spec, or one the device cannot run; ``str(err)`` is one line."""


@functools.cache
def _cpu_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), by PyTorch's own
    check of its oneDNN build; without it bfloat16 is emulated and slower than float32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check is not None and torch.backends.mkldnn.is_available() and check())
    except RuntimeError:
        return False


def _cuda_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bfloat16 natively (compute capability 8.0 or later)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def auto_precision(device: torch.device) -> str:
    """What ``precision="auto"`` runs the network in on ``device``: ``"bf16"`` on a CPU with
    native bfloat16 (:func:`_cpu_native_bf16`) and on a CUDA GPU of compute capability 8.0
    or later (Ampere and newer), else ``"fp32"`` (older GPUs, Apple MPS, CPUs without it)."""
    if device.type == "cpu":
        return "bf16" if _cpu_native_bf16() else "fp32"
    if device.type == "cuda":
        return "bf16" if _cuda_bf16(device) else "fp32"
    return "fp32"


#: Model modes whose ``precision="auto"`` is fp32 whatever the device: in cells mode the
#: latent density is a KDE over each cell's whole code, whose tail log-densities turn the
#: small changes of reduced-precision codes into large score changes (a briefly trained
#: synthetic cells model, calibrated in fp32, flagged 15-19 of 24 unseen normal cells at 5%
#: when scored in bf16, against 1-2 in fp32). Cells mode meets its speed target in fp32.
FP32_AUTO_MODES = ("cells",)


def resolve_precision(spec: str, device: str | torch.device = "cpu",
                      mode: str | None = None) -> str:
    """The precision the network runs in on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Only the network's forward pass is affected (PyTorch autocast: convolutions in the
    reduced precision, weights kept in float32); its outputs are cast back to float32
    before the error maps, and the latent density and calibration stay float32 / float64
    NumPy. Like the device, the precision is a runtime choice, never stored in a model file.

    Parameters
    ----------
    spec : str
        ``"auto"`` (see :func:`auto_precision`: bf16 where the device computes it natively,
        else fp32), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only). Case and surrounding
        spaces are ignored.
    device : str or torch.device
        The device the network runs on (a spec for :func:`resolve_device`).
    mode : str, optional
        The model's mode; ``"auto"`` is fp32 for the modes in :data:`FP32_AUTO_MODES`
        (cells mode). An explicit ``"bf16"`` or ``"fp16"`` is honoured in every mode.

    Returns
    -------
    str
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises
    ------
    PrecisionError
        For an unknown spec, ``"fp16"`` off CUDA, or ``"bf16"`` on a CUDA GPU without it or
        on Apple MPS.

    Examples
    --------
    >>> resolve_precision("fp32", "cpu")
    'fp32'
    """
    dev = resolve_device(device)
    text = spec.strip().lower() if isinstance(spec, str) else None
    if text not in PRECISIONS:
        raise PrecisionError(f"unknown precision {spec!r}; expected auto, fp32, bf16 or fp16")
    if text == "auto":
        return "fp32" if mode in FP32_AUTO_MODES else auto_precision(dev)
    if text == "fp16" and dev.type != "cuda":
        raise PrecisionError(f"precision fp16 needs a CUDA device; the network runs on {dev}")
    if text == "bf16" and (dev.type == "mps" or (dev.type == "cuda" and not _cuda_bf16(dev))):
        raise PrecisionError(f"precision bf16 is not supported on {dev}; use fp32")
    return text


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """A context in which the network's forward runs in ``precision`` (a resolved one:
    ``"fp32"``, ``"bf16"`` or ``"fp16"``) on ``device``: :class:`torch.autocast` for the
    reduced precisions, nothing for fp32 (bit-identical to running without it). Cast the
    outputs to float32 (``.float()``) before using them."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def describe_precision(device: str | torch.device = "auto") -> str:
    """One line on what ``precision="auto"`` picks on ``device`` (by default the device
    ``"auto"`` picks), for help texts and logs, e.g. ``"auto picks bf16 on cpu"``.

    Like :func:`describe_devices` it does not initialise CUDA: on a CUDA device nothing has
    initialised yet, it states the rule instead of the answer."""
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_initialized():
        return f"auto picks bf16 on {dev} if its compute capability is 8.0 or more, else fp32"
    return f"auto picks {auto_precision(dev)} on {dev}"
