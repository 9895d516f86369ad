"""Argument types and the help formatter of the ``cell-anomaly`` parser (torch-free)."""

from __future__ import annotations

import argparse

#: Stand for the devices found and the side of the images scoring streams in help texts;
#: filled in only when the help is shown, as finding them imports torch
#: (``cell-anomaly --help`` and argument errors must not).
DEVICES_FOUND = "<devices found>"
AUTO_PRECISION = "<auto precision>"
#: ``--precision`` choices: :data:`..core.device.PRECISIONS`, written out here because that
#: module imports torch (a test checks that they agree).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STREAM_SIDE = "<stream side>"


class HelpFormatter(argparse.HelpFormatter):
    """Fills in :data:`DEVICES_FOUND`, :data:`AUTO_PRECISION` and :data:`STREAM_SIDE` when
    a help text is formatted."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and DEVICES_FOUND in text:
            from ..core.device import describe_devices

            found = describe_devices().removeprefix("devices found: ").replace("%", "%%")
            text = text.replace(DEVICES_FOUND, found)
        if text and AUTO_PRECISION in text:
            from ..core.device import describe_precision

            text = text.replace(AUTO_PRECISION, describe_precision().replace("%", "%%"))
        if text and STREAM_SIDE in text:
            from ..core.lazyimage import STREAM_PIXELS

            text = text.replace(STREAM_SIDE, str(round(STREAM_PIXELS ** 0.5)))
        return text


def _parse(text: str, kind: type[int] | type[float]) -> int | float:
    """``text`` as a ``kind`` (int or float), or an argparse error naming what was given."""
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def fpr_arg(text: str) -> float:
    """A false-alarm rate: a number strictly between 0 and 1."""
    value = _parse(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def positive_arg(text: str) -> int:
    """A whole number of at least 1."""
    value = _parse(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float_arg(text: str) -> float:
    """A finite number above 0."""
    value = _parse(text, float)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def channel_axis_arg(text: str) -> int | str:
    """A channel axis index, or ``none`` (the file has no channel axis)."""
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an axis index or 'none', got {text!r}"
                                         ) from None

