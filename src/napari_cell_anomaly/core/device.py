"""Compute devices: where the network runs (a runtime choice, never stored in a model file).

A device is named by a short spec: ``"auto"`` (a CUDA GPU if there is one, else Apple's MPS,
else the CPU), ``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"`` or ``"mps"``; a
:class:`torch.device` is accepted as well. Only the network and its tensors live on the device;
latent densities and calibration stay in NumPy on the CPU, so a model trained on a GPU scores on
a CPU and the reverse.
"""

from __future__ import annotations

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
