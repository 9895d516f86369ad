"""Lazy heatmaps of big images: only the chunks asked for are computed, chunks join without
seams (the lazy map equals the in-memory map), coarse levels never compute, compute_all fills
the map with progress and can be stopped."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest

from napari_cell_anomaly.core.lazymaps import LazyAnomalyMap
from napari_cell_anomaly.core.sample import make_field
from napari_cell_anomaly.core.tiling import PredictionStopped

SHAPE = (600, 700)


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return make_field(SHAPE, n_cells=80, anomaly_fraction=0.3, seed=4)[0]


@pytest.fixture(scope="module")
def in_memory_map(patch_detector, field) -> np.ndarray:
    return patch_detector.score(field).error_map


def test_a_view_computes_only_the_chunks_it_overlaps(patch_detector, field,
                                                     in_memory_map) -> None:
    heat = LazyAnomalyMap(patch_detector, da.from_array(field, chunks=(100, 100, 3)),
                          chunk=128)
    assert heat.grid == (5, 6) and heat.array.shape == SHAPE and heat.n_computed == 0
    view = heat.array[100:300, 150:420].compute()  # rows in chunks 0-2, columns in 1-3
    assert heat.n_computed == 3 * 3
    np.testing.assert_allclose(view, in_memory_map[100:300, 150:420], rtol=1e-4, atol=1e-6)


def test_chunks_join_without_seams(patch_detector, field, in_memory_map) -> None:
    # 128 px chunks of a channels-first array: chunk borders fall inside the in-memory
    # path's 512 px tiles, so any seam would show as a difference there.
    heat = LazyAnomalyMap(patch_detector, np.ascontiguousarray(field.transpose(2, 0, 1)),
                          chunk=128, channel_axis=0)
    full = heat.array.compute()
    assert full.shape == SHAPE and full.dtype == np.float32
    np.testing.assert_allclose(full, in_memory_map, rtol=1e-4, atol=1e-6)
    # Across every chunk border the map is as smooth as the in-memory one.
    for axis in (0, 1):
        jumps = np.abs(np.diff(full, axis=axis)).take(np.arange(127, SHAPE[axis] - 1, 128),
                                                      axis=axis)
        ref = np.abs(np.diff(in_memory_map, axis=axis)).take(
            np.arange(127, SHAPE[axis] - 1, 128), axis=axis)
        np.testing.assert_allclose(jumps, ref, atol=1e-5)


def test_levels_show_computed_chunks_only_and_compute_all_fills_them(patch_detector,
                                                                     field) -> None:
    heat = LazyAnomalyMap(patch_detector, field, chunk=128)
    levels = heat.levels([1, 2, 4, 3])  # 3 does not divide 128: left out
    assert [lv.shape for lv in levels] == [SHAPE, (300, 350), (150, 175)]
    assert not levels[2].compute().any() and heat.n_computed == 0  # coarse: nothing computed
    heat.array[:128, :128].compute()
    coarse = levels[1].compute()
    assert coarse[:64, :64].any() and not coarse[64:].any() and not coarse[:, 64:].any()
    seen: list[tuple[int, int]] = []
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 10

    with pytest.raises(PredictionStopped):
        heat.compute_all(progress=lambda d, t: seen.append((d, t)), stop=stop)
    assert heat.n_computed == 10 and seen[-1] == (10, 30)
    heat.compute_all(progress=lambda d, t: seen.append((d, t)))
    assert heat.n_computed == heat.n_blocks == 30 and seen[-1] == (30, 30)
    full = heat.array.compute()
    np.testing.assert_array_equal(levels[1].compute(), full[::2, ::2])
    np.testing.assert_array_equal(levels[2].compute(), full[::4, ::4])
    np.testing.assert_array_equal(heat[5:500:3, 7:690:5], full[5:500:3, 7:690:5])


def test_lazy_maps_need_a_patch_mode_model(patch_detector, field) -> None:
    whole = dataclasses.replace(patch_detector, mode="whole")
    with pytest.raises(ValueError, match="lazy heatmaps need a patch-mode model"):
        LazyAnomalyMap(whole, field)


def test_iter_score_scores_the_image_and_fills_the_chunks_not_yet_computed(
        patch_detector, field, in_memory_map) -> None:
    """One streamed pass gives the image's score (that of detector.score) and fills the map;
    a chunk computed before (by a view) is kept as it was."""
    heat = LazyAnomalyMap(patch_detector, da.from_array(field, chunks=(100, 100, 3)),
                          chunk=128)
    viewed = heat.block(1, 2)
    steps = heat.iter_score()
    progress = []
    with pytest.raises(StopIteration) as end:
        while True:
            progress.append(next(steps))
    result = end.value.value
    assert result is heat.score
    assert progress[-1] == (SHAPE[0], SHAPE[0]) and len(progress) > 1
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert heat.n_computed == heat.n_blocks and heat.cached(1, 2) is viewed
    ref = patch_detector.score(field)
    assert result.score == pytest.approx(ref.score, rel=1e-4)
    assert result.percentile == pytest.approx(ref.percentile, abs=1e-6)
    assert result.is_anomaly == ref.is_anomaly
    np.testing.assert_allclose(heat.array.compute(), in_memory_map, rtol=1e-4, atol=1e-6)


def test_iter_score_can_be_stopped_and_keeps_the_rows_filled(patch_detector, field) -> None:
    heat = LazyAnomalyMap(patch_detector, field, chunk=128)
    with pytest.raises(PredictionStopped):  # asked to stop once a band came in
        list(heat.iter_score(stop=lambda: heat.n_computed > 0))
    assert heat.score is None and heat.n_computed > 0
    assert heat.block(0, 0) is heat.cached(0, 0)  # the filled chunks are kept
