"""Argument types and the help formatter of the ``cell-anomaly`` parser (torch-free)."""

from __future__ import annotations

import argparse

#: Stand for the devices found and the side of the images scoring streams in help texts;
#: filled in only when the help is shown, as finding them imports torch
#: (``cell-anomaly --help`` and argument errors must not).
DEVICES_FOUND = "<devices found>"
STREAM_SIDE = "<stream side>"


class HelpFormatter(argparse.HelpFormatter):
    """Fills in :data:`DEVICES_FOUND` and :data:`STREAM_SIDE` when a help text is
    formatted."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and DEVICES_FOUND in text:
            from ..core.device import describe_devices

            found = describe_devices().removeprefix("devices found: ").replace("%", "%%")
            text = text.replace(DEVICES_FOUND, found)
        if text and STREAM_SIDE in text:
            from ..core.lazyimage import STREAM_PIXELS

            text = text.replace(STREAM_SIDE, str(round(STREAM_PIXELS ** 0.5)))
        return text


def fpr_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def positive_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def channel_axis_arg(text: str) -> int | str:
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an axis index or 'none', got {text!r}"
                                         ) from None

