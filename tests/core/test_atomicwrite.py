"""Atomic writes: the target gets the whole new content or keeps its old one."""

from __future__ import annotations

import pytest

from napari_cell_anomaly.core.atomicwrite import atomic_path, atomic_text


def test_atomic_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "rows.csv"
    target.write_text("old\n", encoding="utf-8")
    with atomic_text(target, fsync=True) as fh:
        fh.write("a,b\n1,2\n")
        assert target.read_text(encoding="utf-8") == "old\n"  # not visible before the end
    assert target.read_text(encoding="utf-8") == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


def test_a_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "map.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]
