"""Per-cell scoring of fields: :class:`CellScoring`, the part of
:class:`~.detector.AnomalyDetector` that scores every cell of a field (cells mode, and whole
mode scoring cells as crops)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .cellscores import CellScores
from .cellunits import (
    CellUnits,
    balance_field,
    centred_window,
    clip_window,
    cut_units,
    orient_units,
    readable,
    reduction_masks,
    shape_features,
    take_cells,
    unorient,
)
from .images import ImageError, resize
from .scoring import DEFAULT_FPR

if TYPE_CHECKING:
    from .detector import ScoreResult


@dataclass(frozen=True)
class FieldScore:
    """A field judged by its worst judged cell (:meth:`CellScoring.field_score`): the numbers
    of its row in ``score --csv`` and of :meth:`CellScoring.score_field`'s result.

    Attributes
    ----------
    row : int
        The worst judged cell's row in the cells' table.
    score : float
        That cell's score adjusted for the number of cells judged
        (:meth:`~.scoring.Calibration.window_adjusted`), so the rate holds per field.
    recon_error, log_density : float
        That cell's own numbers.
    percentile : float
        The field's percentile (``100 (1 - adjusted p-value)``).
    is_anomaly : bool
        ``score > threshold``: a field with a flagged cell can be normal.
    threshold : float
        The combined-score threshold of the false-alarm rate asked for.
    n_judged : int
        The cells judged.
    """

    row: int
    score: float
    recon_error: float
    log_density: float
    percentile: float
    is_anomaly: bool
    threshold: float
    n_judged: int


class CellScoring:
    """Per-cell scoring, mixed into :class:`~.detector.AnomalyDetector` (which provides the
    network, preprocessing, densities, calibration and ``analyse_units`` / ``_finish`` /
    ``_image_score`` / ``_note_range``)."""

    def score_cells(self, image: np.ndarray, labels: np.ndarray | None = None, *,
                    fpr: float | None = None, name: str = "image",
                    include_border: bool = False) -> CellScores:
        """Score every cell of a field.

        Parameters
        ----------
        image : np.ndarray
            A 2-D field (as for :meth:`score`).
        labels : np.ndarray, optional
            ``(H, W)`` integer label image (0 = background, one value per cell), e.g. from
            cellpose, StarDist or a hand annotation. None finds the cells with
            :func:`.segmentation.segment_cells`.
        fpr : float, optional
            Target false-alarm rate per cell for the verdicts (default 5%).
        name : str
            Used in error messages.
        include_border : bool
            Judge the cells cut by the image edge too (by default they are scored and marked
            but get no verdict).

        Returns
        -------
        CellScores

        Raises
        ------
        ImageError
            For an invalid image, labels of another shape, no readable cells, or a patch-mode
            model (its calibration is per window, not per cell).
        """
        cells, _, _, _, clipped = self._cells(image, labels, fpr, name, include_border,
                                              with_recon=False)
        cells.range_warning = self.preprocessing.range_warning(clipped,
                                                               np.asarray(image).dtype, name)
        return cells

    def _cells(self, image: np.ndarray, labels: np.ndarray | None, fpr: float | None,
               name: str, include_border: bool, with_recon: bool = True
               ) -> tuple[CellScores, CellUnits, list[np.ndarray], np.ndarray, float]:
        """:meth:`score_cells`, also returning the units, their reconstructions (as the
        network saw them, unless ``with_recon``: see :meth:`_measure_cell_units`), the
        preprocessed field and the fraction of its values clipped by the preprocessing."""
        from .cells import check_labels, measure_cells
        from .segmentation import segment_cells

        if self.mode == "patch":
            raise ImageError("this patch-mode model is calibrated on windows, not cells; "
                             "train a cells-mode model (or a whole-image model on cell crops) "
                             "to score cells")
        fpr = DEFAULT_FPR if fpr is None else fpr
        x, clipped = self.preprocessing.transform(image, name=name)
        label = "the image" if name == "image" else f"image {name!r}"
        if self.mode == "cells" and max(x.shape[:2]) < 2 * self.size:
            raise ImageError(
                f"{label} is {x.shape[0]}x{x.shape[1]} pixels, less than two of this "
                f"cells-mode model's {self.size} px cell windows: it looks like a single-cell "
                "crop; cells-mode models score fields of many cells (score crops with a "
                "whole-image model)")
        if labels is None:
            labels = segment_cells(image, **self.segmentation)
            if not labels.any():
                raise ImageError(f"no cells found in {label}")
        else:
            labels = check_labels(labels, x.shape[:2], name=f"the labels of {label}")
        table = measure_cells(labels)
        ok = readable(table)
        if not ok.any():
            raise ImageError(f"every object in the labels of {label} is too small to be read "
                             "as a cell")
        table = take_cells(table, ok)
        fill = None
        if self.mode == "cells":
            if self.balance:
                x, fill = balance_field(x, labels)
            units = cut_units(x, labels, table, self.size, context=self.context, fill=fill)
        else:
            units = _cell_crops(x, labels, table, self.size)
        err, logd, shape, maps, recons = self._measure_cell_units(units, fill, with_recon)
        cal = self.calibration
        scores = cal.combine(err, logd, shape if self.shape is not None else None)
        threshold = cal.threshold(fpr)
        at_border = np.asarray(table.at_border, dtype=bool)
        judged = np.ones_like(at_border) if include_border else ~at_border
        cols = {
            "label": np.asarray(table.label, dtype=np.int64),
            "score": scores.astype(np.float64),
            "recon_error": err.astype(np.float64),
            "log_density": logd.astype(np.float64),
            "percentile": cal.percentile(scores),
            "is_anomaly": (scores > threshold) & judged,
            "area": np.asarray(table.area, dtype=np.int64),
            "centroid_y": np.asarray(table.centroid_y, dtype=np.float64),
            "centroid_x": np.asarray(table.centroid_x, dtype=np.float64),
            "at_border": at_border,
            "shape_log_density": shape.astype(np.float64),
        }
        error_map = _paste_cells(maps, units, labels.shape)
        result = CellScores(cols, labels, error_map, threshold, include_border,
                            skipped=int((~ok).sum()))
        return result, units, recons, x, clipped

    def _measure_cell_units(self, units: CellUnits, fill: np.ndarray | None = None,
                            with_recon: bool = True
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray],
                                       list[np.ndarray]]:
        """Error, latent and shape log-densities, error map and reconstruction of each cell
        unit (shape: NaN without a shape density). With ``orient`` the network sees the
        units turned (:func:`.cellunits.orient_units`, ``fill`` outside them) and the maps
        (and, ``with_recon``, the reconstructions) are turned back; the morphometry reads
        the units as they lie."""
        seen = orient_units(units, fill) if self.orient and self.mode == "cells" else units
        region = (reduction_masks(seen.masks, self.scoring.erode) if self.mode == "cells"
                  else None)
        err, logd, maps, recons = [], [], [], []
        for start in range(0, len(seen), 256):
            part = slice(start, start + 256)
            res = self.analyse_units(np.stack(seen.windows[part]),
                                     region[part] if region is not None else None,
                                     with_ssim=False)
            err.append(res["recon_error"])
            logd.append(self.density.log_density(res["codes"]))
            maps.extend(res["error_map"])
            recons.extend(res["recon"])
        shape = (self.shape.log_density(shape_features(units)) if self.shape is not None
                 else np.full(len(units), np.nan))
        if seen is not units:
            maps = unorient(maps, seen)
            recons = unorient(recons, seen) if with_recon else recons
        return np.concatenate(err), np.concatenate(logd), shape, maps, recons

    def score_field(self, image: np.ndarray, labels: np.ndarray | None = None, *,
                    fpr: float | None = None, name: str = "image",
                    include_border: bool = False) -> tuple[ScoreResult, CellScores]:
        """Score the cells of a field and judge the field by its worst cell.

        The field's score is its worst judged cell's, adjusted for the number of cells judged
        (as patch mode adjusts for windows: see :meth:`Calibration.window_adjusted`), so the
        false-alarm rate holds per field. Parameters as for :meth:`score_cells`.

        Returns
        -------
        (ScoreResult, CellScores)
            The field's result (error map and reconstruction assembled from the cells) and
            the per-cell table.

        Raises
        ------
        ImageError
            As :meth:`score_cells`, and when every cell touches the image edge.
        """
        fpr = DEFAULT_FPR if fpr is None else fpr
        cells, units, recons, x, clipped = self._cells(image, labels, fpr, name,
                                                       include_border)
        field = self.field_score(cells, fpr)
        if field is None:
            label = "the image" if name == "image" else f"image {name!r}"
            raise ImageError(f"every cell found in {label} touches the image edge, so none "
                             "can be judged")
        row = {k: v[field.row] for k, v in cells.table.items()}
        recon = _paste_cells(recons, units, x.shape[:2], base=x)
        zeros = np.zeros(x.shape[:2], dtype=np.float32)
        shape = row["shape_log_density"] if self.shape is not None else None
        result = self._finish(row["recon_error"], row["log_density"], fpr, cells.error_map,
                              zeros, recon, n_windows=field.n_judged, shape_logd=shape)
        result = self._note_range(result, clipped, np.asarray(image).dtype, name)
        cells.range_warning = result.range_warning
        return result, cells

    def field_score(self, cells: CellScores, fpr: float | None = None,
                    include_border: bool | None = None, rows: np.ndarray | None = None
                    ) -> FieldScore | None:
        """Judge a field by its worst judged cell, without scoring again.

        The rule of :meth:`score_field` (and so of a field's row in ``score --csv``), applied
        to cells already scored: e.g. at another false-alarm rate or edge rule.

        Parameters
        ----------
        cells : CellScores
            The field's cells (:meth:`score_cells`).
        fpr : float, optional
            False-alarm rate per field of the verdict (default 5%).
        include_border : bool, optional
            Judge the cells cut by the image edge too; None: as ``cells`` were scored.
        rows : np.ndarray, optional
            Bool ``(N,)``: only these cells make up the field (e.g. one plane of a stack's
            merged cells).

        Returns
        -------
        FieldScore or None
            None when no cell is judged.
        """
        fpr = DEFAULT_FPR if fpr is None else fpr
        worst = cells.worst(include_border, rows)
        if worst < 0:
            return None
        n = int(cells.judged(include_border, rows).sum())
        t = cells.table
        err, logd = float(t["recon_error"][worst]), float(t["log_density"][worst])
        shape = float(t["shape_log_density"][worst]) if self.shape is not None else None
        score, percentile = self._image_score(err, logd, shape, n)
        threshold = float(self.calibration.threshold(fpr))
        return FieldScore(worst, float(score), err, logd, float(percentile),
                          bool(score > threshold), threshold, n)


def _cell_crops(x: np.ndarray, labels: np.ndarray, table: Any, size: int) -> CellUnits:
    """Whole-mode units for the cells of a field: each cell's box, squared and padded by 10%,
    with every pixel outside the cell set to 0 (the black background of cropped-cell
    datasets), resized to the model size."""
    windows, masks, origins = [], [], []
    for lab, box in zip(table.label, table.bbox, strict=True):
        r0, c0, r1, c1 = (int(v) for v in box)
        s = int(np.ceil(max(r1 - r0, c1 - c0) * 1.1)) + 2
        origin, field, dst = centred_window(box, s, x.shape)
        crop = np.zeros((s, s, x.shape[2]), dtype=np.float32)
        own = np.zeros((s, s), dtype=bool)
        own[dst] = labels[field] == lab
        crop[dst] = x[field]
        crop[~own] = 0.0
        windows.append(resize(crop, (size, size)))
        masks.append(own)
        origins.append(origin)
    return CellUnits(windows, masks, np.asarray(origins, dtype=np.int64).reshape(-1, 2))


def _paste_cells(parts: Sequence[np.ndarray], units: CellUnits, shape: tuple[int, ...],
                 base: np.ndarray | None = None) -> np.ndarray:
    """Put each cell's ``(s, s[, C])`` map or image onto its own pixels of a field.

    Units whose window side differs from the part's (whole-mode crops, resized) are resized
    back first.
    """
    first = parts[0] if len(parts) else np.zeros((1, 1))
    out = (base.copy() if base is not None
           else np.zeros((*shape[:2], *first.shape[2:]), dtype=np.float32))
    for part, own, (top, left) in zip(parts, units.masks, units.origins, strict=True):
        s = own.shape[0]
        if part.shape[0] != s:
            part = resize(part, (s, s))
        field, src = clip_window(int(top), int(left), s, shape)
        sel = own[src]
        out[field][sel] = part[src][sel]
    return out
