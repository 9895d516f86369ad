"""The ``cell-anomaly`` commands' implementations (:mod:`napari_cell_anomaly.cli` is the
entry point: argument parsing and dispatch)."""
