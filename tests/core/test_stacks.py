"""Stacks and time series: planes read one at a time (core.stackio), scored with the 2-D model,
heatmaps stacked (core.stacks); files' plane axes from their TIFF metadata; bad stacks refused in
one line."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_cell_anomaly.core import stacks
from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.stackio import as_stack, load_planes, read_stack
from napari_cell_anomaly.core.stacks import MapStack, score_stack


class CountingPlanes:
    """Array-like (P, H, W, 3) source for dask that records which planes were read."""

    def __init__(self, planes: np.ndarray) -> None:
        self.planes = planes
        self.reads: list[int] = []
        self.shape, self.dtype, self.ndim = planes.shape, planes.dtype, planes.ndim

    def __getitem__(self, key: tuple) -> np.ndarray:
        first = key[0]
        self.reads.extend(range(*first.indices(self.shape[0])) if isinstance(first, slice)
                          else [int(first)])
        return self.planes[key]


def test_as_stack_and_read_stack_are_still_importable_from_core_stacks() -> None:
    # README documented ``from napari_cell_anomaly.core.stacks import as_stack, read_stack``.
    assert stacks.as_stack is as_stack
    assert stacks.read_stack is read_stack


def test_each_plane_is_scored_as_the_2d_model_scores_it(crop_model, crop_planes) -> None:
    stack = as_stack(crop_planes, name="crops")
    got = list(score_stack(crop_model, stack))
    assert [p.index for p in got] == list(range(5))
    assert [p.name for p in got] == [f"crops [z={i}]" for i in range(5)]
    for p in got:
        ref = crop_model.score(crop_planes[p.index])
        assert p.error is None and p.result.score == pytest.approx(ref.score, rel=1e-6)
        np.testing.assert_allclose(p.result.error_map, ref.error_map, rtol=1e-5, atol=1e-7)
    maps = MapStack(len(stack), stack.plane_shape)
    for p in got:
        maps.put(p.index, p.result.error_map)
    assert maps.data.shape == (5, 32, 32) and maps.data.dtype == np.float32
    np.testing.assert_array_equal(maps.data[3], got[3].result.error_map)


def test_a_dask_stack_is_read_one_plane_at_a_time(crop_model, crop_planes) -> None:
    source = CountingPlanes(crop_planes)
    lazy = da.from_array(source, chunks=(1, 32, 32, 3), asarray=False)
    planes = score_stack(crop_model, as_stack(lazy, name="lazy", axis="T"))
    first = next(planes)
    assert first.name == "lazy [t=0]" and first.result is not None
    assert source.reads == [0]  # plane 0 only, not the stack
    rest = list(planes)
    assert source.reads == [0, 1, 2, 3, 4]  # each plane read once, in order
    assert [p.result.score for p in rest] == pytest.approx(
        [crop_model.score(crop_planes[i]).score for i in range(1, 5)], rel=1e-6)


def _indices(key: int | slice) -> list[int]:
    """The indices one item of a read key covers (an index or a slice)."""
    return [key] if isinstance(key, int) else list(range(key.start, key.stop))


def test_a_tiff_stack_file_is_read_one_plane_at_a_time(crop_model, crop_planes,
                                                       tmp_path: Path) -> None:
    """read_stack reads a multi-page TIFF plane by plane from the file: nothing when opened,
    one plane's pages per plane scored, and the same scores as the planes in memory."""
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, crop_planes, metadata={"axes": "ZYXS"})
    stack = read_stack(path)
    assert stack.is_stack and len(stack) == 5 and stack.plane_axes == "YXS"
    assert stack.plane_shape == (32, 32, 3)
    assert stack.source.reads == []  # opening and the plane shape read no pixel
    planes = score_stack(crop_model, stack)
    first = next(planes)
    assert [_indices(k[0]) for k in stack.source.reads] == [[0]]  # plane 0 only
    rest = list(planes)
    # each plane read once, in order, and alone
    assert [_indices(k[0]) for k in stack.source.reads] == [[i] for i in range(5)]
    for p in [first, *rest]:
        ref = crop_model.score(crop_planes[p.index])
        assert p.result.score == pytest.approx(ref.score, rel=1e-6)
        np.testing.assert_allclose(p.result.error_map, ref.error_map, rtol=1e-5, atol=1e-7)


def test_a_hyperstack_plane_reads_only_its_own_channel_pages(tmp_path: Path) -> None:
    """Z planes of 2 channels stored as separate pages (ZCYX): a plane reads its 2 pages and
    holds the pixels a whole read gives for it (channels last)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(4, 2, 16, 16), dtype=np.uint8)
    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, data, metadata={"axes": "ZCYX"})
    stack = read_stack(path)
    assert len(stack) == 4 and stack.plane_axes == "YXC"
    np.testing.assert_array_equal(stack.plane(2), np.moveaxis(data[2], 0, -1))
    assert sorted((_indices(k[0]), _indices(k[1])) for k in stack.source.reads) == [
        ([2], [0]), ([2], [1])]


def test_a_bad_plane_is_reported_and_the_others_scored(crop_model, crop_planes) -> None:
    planes = crop_planes.copy()
    planes[2] = 9  # a constant plane
    got = list(score_stack(crop_model, as_stack(planes, name="s")))
    assert [p.result is None for p in got] == [False, False, True, False, False]
    assert "constant" in got[2].error and "s [z=2]" in got[2].error


@pytest.mark.parametrize(("data", "expected"), [
    ([np.zeros((32, 32)), np.zeros((32, 32)), np.zeros((24, 32))],
     "planes of different sizes: plane 0 is (32, 32), plane 2 is (24, 32)"),
    (np.zeros((2, 3, 32, 32)), "4-D array of shape (2, 3, 32, 32)"),
    (np.zeros((2, 3, 4, 32, 32)), "5-D array"),
    (np.zeros((32, 32)), "2-D array"),
    ([], "no planes"),
])
def test_bad_stacks_get_one_clear_line(data, expected) -> None:
    with pytest.raises(ImageError) as err:
        as_stack(data, name="bad")
    assert expected in str(err.value) and "\n" not in str(err.value)


# -- files ------------------------------------------------------------------------------------
def test_tiff_axes_decide_the_planes(tmp_path: Path, crop_planes) -> None:
    gray = crop_planes[..., 1]
    cases = {
        "z.tif": (gray, {"metadata": {"axes": "ZYX"}}, "Z", (5, 32, 32)),
        "t.tif": (gray, {"imagej": True, "metadata": {"axes": "TYX"}}, "T", (5, 32, 32)),
        "rgb.tif": (crop_planes, {"metadata": {"axes": "ZYXS"}}, "Z", (5, 32, 32, 3)),
        "zc.tif": (np.stack([gray, gray[::-1]], 1), {"imagej": True,
                                                     "metadata": {"axes": "ZCYX"}},
                   "Z", (5, 32, 32, 2)),  # channels moved last
    }
    for name, (data, kw, axis, shape) in cases.items():
        tifffile.imwrite(tmp_path / name, data, **kw)
        stack = read_stack(tmp_path / name)
        assert stack.is_stack and stack.axis == axis, name
        assert np.shape(stack.data) == (*shape, 1)[:4], name  # channels last, always
        plane = stack.plane(4)
        np.testing.assert_array_equal(plane[..., 1] if plane.shape[-1] > 1 else plane[..., 0],
                                      data[4, 1] if name == "zc.tif" else gray[4])
    # A TIFF without axes: 5 planes or 5 channels? channel_axis="none" settles it.
    tifffile.imwrite(tmp_path / "q.tif", gray, photometric="minisblack")
    with pytest.raises(ImageError, match="channels or planes"):
        read_stack(tmp_path / "q.tif")
    stack = read_stack(tmp_path / "q.tif", channel_axis="none")
    assert stack.is_stack and len(stack) == 5 and stack.plane_name(2) == "q.tif [2]"
    np.testing.assert_array_equal(stack.plane(2)[..., 0], gray[2])
    tifffile.imwrite(tmp_path / "one.tif", crop_planes[0])  # one RGB image
    single = read_stack(tmp_path / "one.tif")
    assert not single.is_stack and len(single) == 1 and single.plane_name(0) == "one.tif"
    np.testing.assert_array_equal(single.plane(0), crop_planes[0])
    # Several images of one size in one TIFF: a stack of them.
    tifffile.imwrite(tmp_path / "series.tif", crop_planes[0])
    tifffile.imwrite(tmp_path / "series.tif", crop_planes[1], append=True)
    pair = read_stack(tmp_path / "series.tif")
    assert pair.is_stack and len(pair) == 2
    np.testing.assert_array_equal(pair.plane(1), crop_planes[1])


@pytest.mark.parametrize(("case", "expected"), [
    ("sizes", "holds 2 images of different sizes"),
    ("tz", "axes TZYXC"),
    ("three", "holds channels or planes"),
])
def test_bad_stack_files_get_one_clear_line(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / f"{case}.tif"
    if case == "sizes":
        tifffile.imwrite(path, np.ones((32, 32), np.uint8))
        tifffile.imwrite(path, np.ones((24, 32), np.uint8), append=True)
    elif case == "tz":
        tifffile.imwrite(path, np.ones((2, 3, 32, 32), np.uint8), imagej=True,
                         metadata={"axes": "TZYX"})
    else:  # (3, H, W) written page by page, without axes
        tifffile.imwrite(path, np.ones((3, 32, 32), np.uint8), photometric="minisblack")
    with pytest.raises(ImageError) as err:
        read_stack(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert path.name in str(err.value)


def test_load_planes_gives_one_training_image_per_plane(tmp_path: Path, crop_planes) -> None:
    tifffile.imwrite(tmp_path / "a.tif", crop_planes, metadata={"axes": "ZYXS"})
    tifffile.imwrite(tmp_path / "b.tif", crop_planes[0])
    bad = crop_planes.copy()
    bad[1] = 0
    tifffile.imwrite(tmp_path / "c.tif", bad, metadata={"axes": "TYXS"})
    loaded = load_planes(sorted(tmp_path.glob("*.tif")))
    assert loaded.names == [f"a.tif [z={i}]" for i in range(5)] + ["b.tif"] + [
        f"c.tif [t={i}]" for i in (0, 2, 3, 4)]
    assert loaded.planes == [0, 1, 2, 3, 4, None, 0, 2, 3, 4]
    assert [p.name for p in loaded.paths] == ["a.tif"] * 5 + ["b.tif"] + ["c.tif"] * 4
    np.testing.assert_array_equal(loaded.images[3], crop_planes[3])
    assert len(loaded.failures) == 1 and "c.tif [t=1]" in loaded.failures[0][1]


def test_stack_cells_gives_every_cell_of_a_stack_its_own_id() -> None:
    from napari_cell_anomaly.core.cellscores import CELL_COLUMNS, CellScores
    from napari_cell_anomaly.core.stacks import stack_cells

    def plane(ids: list[int], seed: int) -> CellScores:
        labels = np.zeros((16, 16), np.int32)
        for k, i in enumerate(ids):
            labels[2 * k: 2 * k + 2, :4] = i
        table = {c: np.random.default_rng(seed).random(len(ids)) for c in CELL_COLUMNS}
        table["label"] = np.array(ids)
        return CellScores(table, labels, labels.astype(np.float32) / 10, threshold=1.5,
                          skipped=seed)

    a, b = plane([1, 2, 5], 1), plane([1, 3], 2)
    merged = stack_cells([a, None, b], (16, 16))
    assert merged.labels.shape == merged.error_map.shape == (3, 16, 16)
    assert merged.table["label"].tolist() == [1, 2, 5, 6, 8]  # plane 2's ids + 5
    assert merged.table["cell_id"].tolist() == [1, 2, 5, 1, 3]
    assert merged.table["plane"].tolist() == [0, 0, 0, 2, 2]
    np.testing.assert_array_equal(merged.labels[0], a.labels)
    assert not merged.labels[1].any() and not merged.error_map[1].any()
    np.testing.assert_array_equal(merged.labels[2], np.where(b.labels > 0, b.labels + 5, 0))
    np.testing.assert_array_equal(merged.error_map[2], b.error_map)
    assert merged.table["score"][3:].tolist() == b.table["score"].tolist()
    assert merged.skipped == 3 and merged.threshold == 1.5 and len(merged) == 5
    with pytest.raises(ValueError, match="no plane"):
        stack_cells([None, None], (16, 16))


def _random_plane_cells(seed: int, n: int, top: int, shape=(24, 24)):
    """A plane's CellScores: ``n`` cells with ids up to ``top`` and one labelled object that
    is not a scored cell."""
    from napari_cell_anomaly.core.cellscores import CELL_COLUMNS, CellScores

    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, top + 1), size=n + 1, replace=False))
    labels = np.zeros(shape, np.int32)
    for k, i in enumerate(ids):
        labels[k, : 1 + k % shape[1]] = i
    table = {c: rng.random(n) for c in CELL_COLUMNS}
    table["label"] = ids[:-1]  # the last object is not a cell
    return CellScores(table, labels, rng.random(shape).astype(np.float32), threshold=0.7,
                      skipped=int(seed % 3))


def _assert_same_merge(got, want) -> None:
    np.testing.assert_array_equal(got.labels.astype(np.int64), want.labels)
    np.testing.assert_array_equal(got.error_map, want.error_map)
    assert got.table.keys() == want.table.keys()
    for key in want.table:
        np.testing.assert_array_equal(got.table[key], want.table[key], err_msg=key)
    assert (got.skipped, got.threshold, len(got)) == (want.skipped, want.threshold, len(want))


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [3, 0, 5, 1, 4]])
def test_stack_cells_merged_plane_by_plane_equal_the_whole_merge(order: list[int]) -> None:
    """StackCells after each plane equals stack_cells of the planes so far: ids, maps, rows
    (in plane order even when planes come out of order), non-cell objects; ids past 65535
    widen the labels once."""
    from napari_cell_anomaly.core.stacks import StackCells, stack_cells

    planes = [_random_plane_cells(s, n=5 + s, top=40000 if s in (1, 4) else 50)
              for s in range(6)]
    merged = StackCells(6, (24, 24))
    assert merged.labels.dtype == np.uint16
    so_far: list = [None] * 6
    for i, plane in enumerate(order):
        in_order = plane > max(order[:i], default=-1)
        before = merged.labels.copy()
        same_array = merged.labels
        merged.put(plane, planes[plane])
        so_far[plane] = planes[plane]
        want = stack_cells(so_far, (24, 24))
        _assert_same_merge(merged.cells(), want)
        cells_ids = set(want.table["label"].tolist())
        present = set(np.unique(want.labels).tolist()) - {0}
        assert merged.others().tolist() == sorted(present - cells_ids)
        if in_order and merged.labels is same_array:  # only the new plane was written
            others = [p for p in range(6) if p != plane]
            np.testing.assert_array_equal(merged.labels[others], before[others])
    assert merged.labels.dtype == np.uint32  # two planes with ids up to 40000
    with pytest.raises(ValueError, match="already put"):
        merged.put(order[0], planes[order[0]])
    with pytest.raises(ValueError, match="no plane"):
        StackCells(2, (4, 4)).cells()


def test_a_long_page_sequence_is_opened_once_and_closed(tmp_path: Path) -> None:
    """A plain sequence of 40 pages (no shape metadata: tifffile parses every page when it
    opens the file): read plane by plane through one open file, closed by Stack.close."""
    path = tmp_path / "pages.tif"
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, size=(40, 8, 8), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for page in data:
            tif.write(page, metadata=None, contiguous=False)
    stack = read_stack(path)
    assert len(stack) == 40 and stack.axis == "I"
    for i in (0, 17, 39):
        np.testing.assert_array_equal(stack.plane(i)[..., 0], data[i])
    opened = stack.source._open
    assert opened is not None and len(stack.source.reads) == 3
    stack.close()
    assert stack.source._open is None and opened[0].filehandle.closed
    np.testing.assert_array_equal(stack.plane(5)[..., 0], data[5])  # opens again
    stack.close()
