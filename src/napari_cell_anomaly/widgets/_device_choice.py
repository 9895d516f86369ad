"""The device choice of the Train and Score widgets: where the network runs.

:class:`DeviceChoice` is a combo box of ``"auto (<device auto picks>)"`` and every device
found on this machine (``cpu``, ``cuda:N``, ``mps``); its tooltip is the core's
:func:`~..core.device.describe_devices` line. Asking torch which devices there are can take
a while on a machine with a GPU (CUDA driver start-up), so :func:`device_options` is first
called by :mod:`._core_loader` in its background thread, and the widgets fill the box from
that cached answer once the core is ready. The device is a runtime choice, never stored in a
model file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from qtpy.QtWidgets import QComboBox, QWidget

__all__ = ["DeviceChoice", "DeviceOptions", "device_options"]


@dataclass(frozen=True)
class DeviceOptions:
    """What the device probe found: ``specs`` (``"cpu"``, ``"cuda:0"``, ...), the device
    ``auto`` picks, and the core's one-line description."""

    specs: tuple[str, ...]
    auto: str
    description: str


_lock = threading.Lock()
_options: DeviceOptions | None = None


def device_options() -> DeviceOptions:
    """The devices of this machine, probed once per process (thread-safe; imports torch)."""
    global _options
    with _lock:
        if _options is None:
            from ..core.device import describe_devices, found_devices, resolve_device

            _options = DeviceOptions(tuple(found_devices()), str(resolve_device("auto")),
                                     describe_devices())
        return _options


class DeviceChoice(QComboBox):
    """Choose the device: ``auto`` or one of the devices found (filled by :meth:`fill`).

    Until :meth:`fill` it offers ``auto`` alone.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItem("auto", "auto")
        self.setToolTip("Where the network runs (not stored in the model). auto: a CUDA GPU "
                        "if there is one, else Apple's MPS, else the CPU.")

    def fill(self) -> None:
        """List what the probe found (call once the core is ready); keeps the choice."""
        options = device_options()
        current = self.spec()
        self.clear()
        self.addItem(f"auto ({options.auto})", "auto")
        for spec in options.specs:
            self.addItem(spec, spec)
        index = self.findData(current)
        self.setCurrentIndex(max(index, 0))
        self.setToolTip(f"Where the network runs (not stored in the model). auto: a CUDA GPU "
                        f"if there is one, else Apple's MPS, else the CPU.\n"
                        f"{options.description}")

    def spec(self) -> str:
        """The chosen device spec (``"auto"``, ``"cpu"``, ``"cuda:0"``, ``"mps"``)."""
        return self.currentData() or "auto"

    def choose(self, spec: str) -> bool:
        """Select ``spec`` if it is offered; False if it is not."""
        index = self.findData(spec)
        if index < 0:
            return False
        self.setCurrentIndex(index)
        return True

    def offered(self) -> list[str]:
        """The specs offered, in order (``"auto"`` first)."""
        return [self.itemData(i) for i in range(self.count())]
