"""The Train widget's settings: epochs, size, loss, seed and the advanced ones (device too).

:class:`TrainSettings` holds the controls and turns them into a
:class:`~..core.training.TrainConfig`. The controls start empty and disabled: their defaults
come from the core (which imports torch), filled by :meth:`TrainSettings.fill_defaults` once it
has loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ._device_choice import DeviceChoice

if TYPE_CHECKING:
    from ..core.training import TrainConfig

__all__ = ["TrainSettings"]

_LOSS_LABELS = {"mse": "MSE (pixel error)", "ssim": "SSIM (structure)", "mix": "MSE + SSIM"}
_MODE_LABELS = {"auto": "auto (from image size)", "whole": "whole image (cell crops)",
                "patch": "patches (fields of view)", "cells": "cells (a window per cell)"}
_PRESETS = ("default", "seed")
_DENSITY_LABELS = {"kde": "kernel density (KDE)", "gmm": "Gaussian mixture"}
_ERROR_LABELS = {"auto": "auto (L*a*b* for RGB brightfield, else MSE)",
                 "lab": "L*a*b* squared error", "mse": "MSE of normalised channels",
                 "ssim": "1 - SSIM", "mix": "MSE + SSIM"}


class TrainSettings(QWidget):
    """The training settings: a basic form and a collapsible "Advanced" one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        settings = QFormLayout()
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.epochs.setToolTip("Passes over the training images; training keeps the epoch with "
                               "the lowest validation loss.")
        self.size = QSpinBox()
        self.size.setRange(16, 512)
        self.size.setSingleStep(8)
        self.size.setSuffix(" px")
        self.size.setToolTip("Model input side (a multiple of 8): cell crops are resized to it; "
                             "large fields of view are learned in patches of this size.")
        self.loss = QComboBox()
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Same images + same settings + same seed = same model.")
        settings.addRow("Epochs", self.epochs)
        settings.addRow("Size", self.size)
        settings.addRow("Loss", self.loss)
        settings.addRow("Seed", self.seed)
        layout.addLayout(settings)

        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 1024)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.preset = QComboBox()
        self.preset.addItems(list(_PRESETS))
        self.preset.setToolTip("default: convolutional autoencoder designed for CPUs (strided "
                               "convolutions down, transposed convolutions up); seed: the "
                               "published Keras design the project started from.")
        self.mode = QComboBox()
        self.robust = QCheckBox("Robust training (ignore outliers)")
        self.robust.setToolTip("Repeatedly gives zero weight to the training images with the "
                               "most anomalous reconstruction error (whole-image mode) and "
                               "drops such images from calibration, for training sets with a "
                               "few abnormal cells mixed in.")
        self.orient = QCheckBox("Orient cells (cells mode)")
        self.orient.setToolTip("Cells mode only: each cell window is turned so the cell's major "
                               "axis is horizontal (and its centre at the window's centre) "
                               "before the network sees it, in training and when the model "
                               "scores; training augmentation then only flips. Off: windows "
                               "as the cells lie.")
        self.density = QComboBox()
        self.density.setToolTip("Whole-image and patch modes: density model over the code "
                                "vectors of single latent positions; an image's log-density is "
                                "that of its least likely position. Cells mode always uses a "
                                "KDE over the whole code of the cell's centred window.")
        adv_form.addRow("Batch size", self.batch_size)
        adv_form.addRow("Learning rate", self.lr)
        adv_form.addRow("Network", self.preset)
        adv_form.addRow("Mode", self.mode)
        adv_form.addRow("Latent density", self.density)
        self.error = QComboBox()
        self.error.setToolTip("The per-pixel error behind scores and heatmaps, recorded in the "
                              "model. auto: squared error in CIE L*a*b* for RGB brightfield "
                              "images, squared error of the normalised channel intensities "
                              "for fluorescence, grayscale and other channel sets.")
        adv_form.addRow("Pixel error", self.error)
        adv_form.addRow(self.robust)
        adv_form.addRow(self.orient)
        self.device = DeviceChoice()
        adv_form.addRow("Device", self.device)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)

        self.size.editingFinished.connect(self.snap_size)
        self.controls = [self.epochs, self.size, self.loss, self.seed, self.batch_size,
                         self.lr, self.preset, self.mode, self.robust, self.density,
                         self.error, self.orient, self.device]

    def set_enabled(self, on: bool) -> None:
        """Enable or disable every control (the "Advanced" toggle stays usable)."""
        for control in self.controls:
            control.setEnabled(on)

    def fill_defaults(self) -> None:
        """Fill the controls with the core's defaults (imports the core: torch)."""
        from ..core.scoring import ERROR_KINDS, TRAINABLE_DENSITIES
        from ..core.training import LOSSES, MODES, TrainConfig

        defaults = TrainConfig()
        self.epochs.setValue(defaults.epochs)
        self.size.setValue(defaults.size)
        for key in LOSSES:
            self.loss.addItem(_LOSS_LABELS.get(key, key), key)
        self.loss.setCurrentIndex(LOSSES.index(defaults.loss))
        self.seed.setValue(defaults.seed)
        self.batch_size.setValue(defaults.batch_size)
        self.lr.setValue(defaults.lr)
        self.preset.setCurrentText(defaults.preset)
        for key in MODES:
            self.mode.addItem(_MODE_LABELS.get(key, key), key)
        self.mode.setCurrentIndex(MODES.index(defaults.mode))
        self.robust.setChecked(defaults.robust)
        self.orient.setChecked(defaults.orient)
        for key in TRAINABLE_DENSITIES:
            self.density.addItem(_DENSITY_LABELS.get(key, key), key)
        self.density.setCurrentIndex(TRAINABLE_DENSITIES.index(defaults.scoring.density))
        for key in ("auto", *ERROR_KINDS):
            self.error.addItem(_ERROR_LABELS.get(key, key), key)
        self.error.setCurrentIndex(max(self.error.findData(defaults.scoring.error), 0))
        self.device.fill()

    def device_spec(self) -> str:
        """The chosen device (``"auto"``, ``"cpu"``, ``"cuda:N"``, ``"mps"``): a runtime
        choice passed to training, not part of the :class:`TrainConfig`."""
        return self.device.spec()

    def snap_size(self) -> None:
        """Round the size to a multiple of 8 (at least 16)."""
        value = self.size.value()
        self.size.setValue(max(16, round(value / 8) * 8))

    def config(self, *, cells: bool = False) -> TrainConfig:
        """The :class:`TrainConfig` the controls describe (raises ValueError if invalid);
        ``cells`` (a cells source is chosen) sets cells mode whatever the Mode control says."""
        from ..core.scoring import ScoringConfig
        from ..core.training import TrainConfig

        self.snap_size()
        return TrainConfig(
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            lr=float(self.lr.value()),
            loss=self.loss.currentData(),
            seed=self.seed.value(),
            size=self.size.value(),
            mode="cells" if cells else self.mode.currentData(),
            preset=self.preset.currentText(),
            robust=self.robust.isChecked(),
            orient=self.orient.isChecked(),
            scoring=ScoringConfig(density=self.density.currentData(),
                                  error=self.error.currentData() or "auto"),
        )
