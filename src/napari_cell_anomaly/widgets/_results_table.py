"""The Score widget's per-image results table, and CSV export.

One row per scored layer, keyed by the layer's stable id. A new result updates its own row (or
appends one) and a new false-alarm rate rewrites only the verdict column, so rendering a batch
of n results costs O(n log n) in all, not a rebuild of the whole table per result.

Numbers show 3 significant digits; their columns widen to the widest number shown (measured
with the table's font as it is when the number comes), and a column the user narrows cuts its
numbers at the right ("0.00…"), never in the middle. Layer names are cut in the middle, so a
stack plane's "[3]" stays visible.

Rows start sorted by layer name, ascending, names compared as people read them (``[2]``
before ``[10]``); the header's sort arrow points up for ascending and down for descending
(Qt's own style draws them the other way round).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QModelIndex, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionHeader,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
)

__all__ = ["ANOMALY_COLOR", "NORMAL_COLOR", "ImageResultsTable", "NameItem", "NumberDelegate",
           "NumberItem", "SortHeader", "cell_text_width", "write_csv"]

COLUMNS = ("Layer", "Score", "Error", "Log-dens.", "Pctl.", "Verdict")
_COLUMN_SAMPLES = ("-0.000", "0.0000", "-0.000", "100", "anomalous")
_COLUMN_TIPS = (
    "The scored image layer (click a row to select it)",
    "Combined anomaly score: the larger of the two robust z-scores below (higher = more "
    "abnormal)",
    "Reconstruction error of the image's most abnormal window",
    "Latent log-density under the training normals' density model; for the position-level "
    "densities, that of the least likely latent position (lower = more unusual)",
    "Percentile among the model's held-out normal images",
    "Verdict at the chosen false-alarm rate",
)
_VERDICT = 5
_NUMBERS = range(1, 5)
ANOMALY_COLOR = QColor(200, 60, 60, 140)
NORMAL_COLOR = QColor(60, 150, 90, 110)
_KEY = Qt.ItemDataRole.UserRole


class NumberItem(QTableWidgetItem):
    """A table cell showing formatted text but sorting by its number."""

    def __init__(self, value: float, text: str) -> None:
        super().__init__(text)
        self.value = float(value)
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, NumberItem):
            return self.value < other.value
        return super().__lt__(other)


def cell_text_width(view: QAbstractItemView, text: str) -> int:
    """The width (px) a cell of ``view`` needs to show ``text`` whole, in its font now: the
    text's advance plus the item view's text margins (and a little room)."""
    margin = view.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, view)
    return view.fontMetrics().horizontalAdvance(text) + 2 * (margin + 1) + 6


def natural_key(text: str) -> tuple:
    """Sort key of a name as people read it: runs of digits compare as numbers
    (``"stack [2]"`` before ``"stack [10]"``), the rest case-insensitively."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
                 for part in re.split(r"(\d+)", text) if part)


class NameItem(QTableWidgetItem):
    """A layer-name cell sorting by :func:`natural_key`."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return natural_key(self.text()) < natural_key(other.text())


class SortHeader(QHeaderView):
    """A header whose sort arrow points up for ascending order (Qt draws a down arrow)."""

    def initStyleOptionForIndex(self, option: QStyleOptionHeader, logical_index: int) -> None:
        super().initStyleOptionForIndex(option, logical_index)
        swap = {QStyleOptionHeader.SortIndicator.SortUp: QStyleOptionHeader.SortIndicator.SortDown,
                QStyleOptionHeader.SortIndicator.SortDown: QStyleOptionHeader.SortIndicator.SortUp}
        option.sortIndicator = swap.get(option.sortIndicator, option.sortIndicator)


class NumberDelegate(QStyledItemDelegate):
    """Draws numbers cut at the right when their column is too narrow (a number cut in the
    middle, "0....87", reads as another number)."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideRight


def _set_verdict(item: QTableWidgetItem, anomalous: bool) -> None:
    item.setText("anomalous" if anomalous else "normal")
    item.setBackground(ANOMALY_COLOR if anomalous else NORMAL_COLOR)


class ImageResultsTable(QTableWidget):
    """Sortable table of image scores, one row per scored layer (keyed by layer id)."""

    def __init__(self) -> None:
        super().__init__(0, len(COLUMNS))
        if hasattr(QHeaderView, "initStyleOptionForIndex"):  # Qt 6: arrows that read right
            self.setHorizontalHeader(SortHeader(Qt.Orientation.Horizontal, self))
        self.setHorizontalHeaderLabels(list(COLUMNS))
        for col, tip in enumerate(_COLUMN_TIPS):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        # Numbers get fixed, just-wide-enough columns; the layer name takes the rest (a dock
        # is narrow, and ResizeToContents would squeeze the names to nothing).
        header = self.horizontalHeader()
        header.setMinimumSectionSize(30)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self._number_delegate = NumberDelegate(self)
        for col in _NUMBERS:
            self.setItemDelegateForColumn(col, self._number_delegate)
        for col in range(1, len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
        self._fit_columns()
        self.setMinimumHeight(110)
        self.setToolTip("Click a row to select that layer. Percentile: share of the "
                        "model's held-out normal images that score lower.")
        self._names: dict[str, QTableWidgetItem] = {}  # key -> the row's first item

    # -- column widths --------------------------------------------------------------------
    def text_width(self, text: str) -> int:
        """The width (px) a cell needs to show ``text`` whole (:func:`cell_text_width`)."""
        return cell_text_width(self, text)

    def _fit(self, col: int, text: str) -> None:
        """Widen column ``col`` (never narrow it) so that ``text`` shows whole."""
        header = self.horizontalHeader()
        need = self.text_width(text)
        if header.sectionSize(col) < need:
            header.resizeSection(col, need)

    def _fit_columns(self) -> None:
        """Fit the number and verdict columns to their header and samples, and the number
        columns to every number shown (again after a change of font or style)."""
        header = self.horizontalHeader()
        for col, sample in enumerate(_COLUMN_SAMPLES, start=1):
            header.resizeSection(col, max(self.text_width(COLUMNS[col]) + 12,
                                          self.text_width(sample)))
            for row in range(self.rowCount() if col in _NUMBERS else 0):
                item = self.item(row, col)
                if item is not None:
                    self._fit(col, item.text())

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._fit_columns()

    # -- reading --------------------------------------------------------------------------
    def key_at(self, row: int) -> str | None:
        """The key of the layer shown in ``row`` (None for no such row)."""
        item = self.item(row, 0)
        return None if item is None else str(item.data(_KEY))

    def keys(self) -> list[str]:
        """The keys of all rows, in table (display) order."""
        return [str(self.item(row, 0).data(_KEY)) for row in range(self.rowCount())]

    def row_of(self, key: str) -> int:
        """The row showing ``key``, or -1."""
        item = self._names.get(key)
        return -1 if item is None else self.row(item)

    # -- writing --------------------------------------------------------------------------
    def set_result(self, key: str, name: str, values: Sequence[float],
                   anomalous: bool) -> None:
        """Show one layer's result: update its row if it has one, else append a row.

        Parameters
        ----------
        key : str
            The layer's stable id.
        name : str
            The layer's name (first column).
        values : sequence of 4 floats
            score, recon_error, log_density, percentile.
        anomalous : bool
            The verdict at the current false-alarm rate.
        """
        score, err, logd, pct = (float(v) for v in values)
        verdict = QTableWidgetItem()
        _set_verdict(verdict, anomalous)
        self._write_row(key, name, [NumberItem(score, f"{score:.3g}"),
                                    NumberItem(err, f"{err:.3g}"),
                                    NumberItem(logd, f"{logd:.3g}"),
                                    NumberItem(pct, f"{pct:.0f}")], verdict)

    def set_pending(self, key: str, name: str, state: str) -> None:
        """Show a layer without numbers yet (e.g. a lazy map not computed): empty number
        cells (sorted as NaN) and ``state`` in the verdict column, uncoloured."""
        verdict = QTableWidgetItem(state)
        verdict.setToolTip(state)
        self._write_row(key, name, [NumberItem(float("nan"), "") for _ in range(4)], verdict)

    def _write_row(self, key: str, name: str, numbers: list[QTableWidgetItem],
                   verdict: QTableWidgetItem) -> None:
        """Write ``key``'s row (appended if it has none): name, the 4 numbers, verdict."""
        sorting = self.isSortingEnabled()
        self.setSortingEnabled(False)  # no re-sort while the row is half written
        row = self.row_of(key)
        if row < 0:
            row = self.rowCount()
            self.insertRow(row)
        first = NameItem(name)
        first.setData(_KEY, key)
        first.setToolTip(name)
        for col, item in enumerate([first, *numbers, verdict]):
            self.setItem(row, col, item)
            if col in _NUMBERS:
                self._fit(col, item.text())
        self._names[key] = first
        self.setSortingEnabled(sorting)  # sorts once by the current sort column

    def set_name(self, key: str, name: str) -> None:
        """Show a renamed layer's new name."""
        item = self._names.get(key)
        if item is not None:
            item.setText(name)
            item.setToolTip(name)

    def set_verdicts(self, verdicts: Mapping[str, bool]) -> None:
        """Rewrite the verdict column (a new false-alarm rate); other columns are kept."""
        sorting = self.isSortingEnabled()
        self.setSortingEnabled(False)
        for key, anomalous in verdicts.items():
            row = self.row_of(key)
            if row >= 0:
                _set_verdict(self.item(row, _VERDICT), anomalous)
        self.setSortingEnabled(sorting)

    def remove(self, key: str) -> None:
        """Drop the row of ``key`` (its layer was removed)."""
        row = self.row_of(key)
        if row >= 0:
            self.removeRow(row)
        self._names.pop(key, None)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], what: str = "result"
              ) -> bool:
    """Write ``rows`` (dicts with the same keys) to a CSV file; notify the outcome.

    Returns False (with a notification) when there is nothing to write or the file cannot be
    written; a failed write leaves no half-written file behind.
    """
    if not rows:
        show_warning("Nothing to export yet: score some images first.")
        return False
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        show_error(f"Could not write {str(path)!r}: {exc}")
        return False
    show_info(f"Exported {len(rows)} {what}{'s' * (len(rows) != 1)} to {path}")
    return True
