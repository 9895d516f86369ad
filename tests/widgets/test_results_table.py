"""GUI tests of the Score widget's images table: numbers are shown whole (3 significant
digits, columns as wide as the widest number, cut at the right if the user narrows a column,
never in the middle) and rows follow the header's sort arrow (up: ascending). A real viewer
under Xvfb, the real dock (napari's style sheet applied)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QStyle, QStyleOptionHeader, QStyleOptionViewItem

from conftest import PLUGIN
from napari_cell_anomaly.widgets._results_table import natural_key

# Numbers of every shape: many digits after the point, negative, large, an exponent.
ROWS = {
    "a": ("small", (0.00987, 0.0187, -12.6, 37.0), False),
    "b": ("large", (34.9, 0.000123, -1234.5, 99.6), True),
    "c": ("tiny", (1.5e-05, 1.25e+06, -0.5, 0.0), False),
}


@pytest.fixture
def table(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]
    qtbot.waitExposed(score.table)
    for key, (name, values, bad) in ROWS.items():
        score.table.set_result(key, name, values, bad)
    return score.table


def test_numbers_are_shown_whole_with_three_significant_digits(table):
    header = table.horizontalHeader()
    margin = table.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, table)
    metrics = table.fontMetrics()
    for key, (name, values, bad) in ROWS.items():
        row = table.row_of(key)
        assert table.item(row, 0).text() == name
        texts = [f"{v:.3g}" for v in values[:3]] + [f"{values[3]:.0f}"]
        for col, (value, text) in enumerate(zip(values, texts, strict=True), start=1):
            item = table.item(row, col)
            assert item.text() == text and item.value == value
            # The column holds the text whole: its advance plus the view's text margins.
            need = metrics.horizontalAdvance(text) + 2 * (margin + 1)
            assert header.sectionSize(col) >= need, (text, header.sectionSize(col), need)
        assert table.item(row, 5).text() == ("anomalous" if bad else "normal")
    for col in range(1, 5):
        # As Qt itself measures the cells (delegate size hints, style sheet included).
        assert header.sectionSize(col) >= table.sizeHintForColumn(col), col
        # A column the user narrows cuts its numbers at the right, not in the middle.
        option = QStyleOptionViewItem()
        table.itemDelegateForColumn(col).initStyleOption(option, table.model().index(0, col))
        assert option.textElideMode == Qt.TextElideMode.ElideRight
    # Layer names are cut in the middle: a stack plane's "[3]" stays visible.
    assert table.textElideMode() == Qt.TextElideMode.ElideMiddle


def test_a_larger_font_widens_the_number_columns(table):
    header = table.horizontalHeader()
    before = header.sectionSize(3)
    font = table.font()
    font.setPointSizeF(font.pointSizeF() * 1.6)
    table.setFont(font)
    text = table.item(table.row_of("b"), 3).text()
    assert text == "-1.23e+03"
    assert header.sectionSize(3) > before
    assert header.sectionSize(3) >= table.fontMetrics().horizontalAdvance(text)


def _arrow(header, section: int):
    option = QStyleOptionHeader()
    header.initStyleOptionForIndex(option, section)
    return option.sortIndicator


def test_rows_follow_the_sort_arrow(table):
    # Planes of a stack come in any order; rows start sorted by name, ascending, as read.
    for plane in (3, 10, 2, 1, 0):
        table.set_result(f"s[{plane}]", f"stack [{plane}]", (1.0, 0.1, -1.0, 50.0), False)
    names = [table.item(r, 0).text() for r in range(table.rowCount())]
    planes = [n for n in names if n.startswith("stack")]
    assert planes == ["stack [0]", "stack [1]", "stack [2]", "stack [3]", "stack [10]"]
    assert names == sorted(names, key=natural_key)
    header = table.horizontalHeader()
    assert header.sortIndicatorSection() == 0
    assert header.sortIndicatorOrder() == Qt.SortOrder.AscendingOrder
    up, down = QStyleOptionHeader.SortIndicator.SortUp, QStyleOptionHeader.SortIndicator.SortDown
    assert _arrow(header, 0) == up  # ascending: the arrow points up
    # The user sorts by score, highest first: the arrow points down.
    table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    scores = [table.item(r, 1).value for r in range(table.rowCount())]
    assert scores == sorted(scores, reverse=True)
    assert _arrow(header, 1) == down and _arrow(header, 0) == QStyleOptionHeader.SortIndicator.None_
