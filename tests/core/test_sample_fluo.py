"""Tests for napari_cell_anomaly.core.sample_fluo (synthetic fluorescence nuclei)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cell_anomaly.core.sample_fluo import (
    ANOMALY_KINDS,
    CHANNEL_NAMES,
    DARK_OFFSET,
    READ_NOISE,
    FluoField,
    make_fluo_field,
)

SHAPE = (256, 256)


@pytest.fixture(scope="module")
def two_channel() -> FluoField:
    return make_fluo_field(SHAPE, n_nuclei=18, n_channels=2, anomaly_fraction=0.25, seed=7)


@pytest.fixture(scope="module", params=ANOMALY_KINDS)
def one_kind(request) -> tuple[str, FluoField]:
    kind = request.param
    return kind, make_fluo_field(SHAPE, n_nuclei=16, anomaly_fraction=0.5, kinds=(kind,),
                                 seed=3)


def _normal_areas(f: FluoField) -> np.ndarray:
    areas = np.bincount(f.labels.ravel(), minlength=len(f.kinds) + 1)[1:]
    return areas[~f.anomalous]


def test_types_shapes_and_channels(two_channel):
    f = two_channel
    assert f.image.shape == (*SHAPE, 2) and f.image.dtype == np.uint16
    assert f.channel_names == CHANNEL_NAMES
    assert f.mask.shape == SHAPE and f.mask.dtype == bool
    assert f.labels.shape == SHAPE and f.labels.dtype == np.int32
    n = len(f.kinds)
    assert n >= 15  # 18 requested; a crowded field may leave a few out
    assert f.anomalous.shape == (n,) and f.anomalous.dtype == bool
    assert np.array_equal(np.unique(f.labels), np.arange(n + 1))  # ids 1..n, all visible
    assert np.array_equal(f.anomalous, np.array([k != "" for k in f.kinds]))
    assert np.array_equal(f.channel("cytoplasm"), f.image[..., 1])
    one = make_fluo_field(SHAPE, n_nuclei=5, seed=0)
    assert one.image.shape == (*SHAPE, 1) and one.channel_names == ("DNA",)


def test_same_seed_same_field_other_seed_other_field(two_channel):
    again = make_fluo_field(SHAPE, n_nuclei=18, n_channels=2, anomaly_fraction=0.25, seed=7)
    for name in ("image", "mask", "labels", "anomalous"):
        np.testing.assert_array_equal(getattr(again, name), getattr(two_channel, name))
    assert again.kinds == two_channel.kinds
    other = make_fluo_field(SHAPE, n_nuclei=18, n_channels=2, anomaly_fraction=0.25, seed=8)
    assert not np.array_equal(other.image, two_channel.image)


def test_anomaly_count_and_kinds_are_dealt_evenly():
    f = make_fluo_field((512, 512), n_nuclei=40, anomaly_fraction=0.2, seed=2)
    assert len(f.kinds) == 40
    counts = {k: f.kinds.count(k) for k in ANOMALY_KINDS}
    assert counts == dict.fromkeys(ANOMALY_KINDS, 2)  # 8 anomalies, 4 kinds in turn


def test_mask_lies_on_the_anomalous_nuclei_and_covers_each(two_channel):
    f = two_channel
    assert 0 not in np.unique(f.labels[f.mask])
    assert set(np.unique(f.labels[f.mask]).tolist()) == set(f.anomalous_ids.tolist())
    km = f.kind_map()
    assert km.dtype == np.uint8 and np.array_equal(km > 0, f.mask)
    for i in f.anomalous_ids:
        codes = np.unique(km[f.labels == i])
        assert codes.tolist() == [0, ANOMALY_KINDS.index(f.kinds[i - 1]) + 1] or \
            codes.tolist() == [ANOMALY_KINDS.index(f.kinds[i - 1]) + 1]


def test_each_kind_looks_like_its_name(one_kind):
    kind, f = one_kind
    assert f.anomalous.sum() >= 6
    dna = f.channel("DNA").astype(float) - DARK_OFFSET
    normal = _normal_areas(f)
    normal_signal = np.median([dna[f.labels == i].mean()
                               for i in np.flatnonzero(~f.anomalous) + 1])
    for i in f.anomalous_ids:
        nucleus = f.labels == i
        anomaly = f.mask & nucleus
        pieces = ndi.label(nucleus)[1]
        if kind == "bright":
            assert anomaly.sum() >= 0.95 * nucleus.sum()
            assert dna[nucleus].mean() > 1.8 * normal_signal
        elif kind == "large":
            assert anomaly.sum() >= 0.95 * nucleus.sum()
            assert nucleus.sum() > 1.8 * np.median(normal)
        elif kind == "fragmented":
            assert pieces >= 3  # separate fragments under one label
            assert np.array_equal(anomaly, nucleus)
        else:  # micronuclei: small extra bodies beside a normal-looking nucleus
            assert pieces >= 2
            assert 0 < anomaly.sum() < 0.3 * nucleus.sum()
            main = ndi.label(nucleus)[0]
            biggest = np.bincount(main[nucleus]).argmax()
            assert not anomaly[main == biggest].any()


def test_normal_nuclei_vary_and_sometimes_touch():
    f = make_fluo_field((512, 512), n_nuclei=70, anomaly_fraction=0.0, seed=4)
    areas = _normal_areas(f)
    assert areas.max() > 1.8 * areas.min()
    dna = f.channel("DNA").astype(float) - DARK_OFFSET
    means = ndi.mean(dna, f.labels, np.arange(1, len(f.kinds) + 1))
    assert means.max() > 1.4 * means.min()
    # touching: horizontally or vertically adjacent pixels of two different nuclei
    a, b = f.labels[:, :-1], f.labels[:, 1:]
    c, d = f.labels[:-1], f.labels[1:]
    pairs = {tuple(sorted(p)) for p in zip(a[(a > 0) & (b > 0) & (a != b)],
                                          b[(a > 0) & (b > 0) & (a != b)], strict=True)}
    pairs |= {tuple(sorted(p)) for p in zip(c[(c > 0) & (d > 0) & (c != d)],
                                           d[(c > 0) & (d > 0) & (c != d)], strict=True)}
    assert 2 <= len(pairs) <= 0.4 * len(f.kinds)


def test_poisson_noise_statistics_of_the_background():
    photons = 40.0
    f = make_fluo_field((256, 256), n_nuclei=0, background=photons, seed=1)
    x = f.channel("DNA").astype(float)
    assert x.min() >= DARK_OFFSET - 8  # the dark offset keeps counts away from 0
    # in small blocks the expected count is nearly constant: variance = mean photons + read
    blocks = x.reshape(16, 16, 16, 16).swapaxes(1, 2).reshape(256, 256)
    photon_mean = blocks.mean(1) - DARK_OFFSET
    variance = blocks.var(1, ddof=1)
    assert 0.6 * photons < np.median(photon_mean) < 1.25 * photons  # illumination falls off
    ratio = variance / (photon_mean + READ_NOISE**2)
    assert 0.9 < np.median(ratio) < 1.1  # shot noise, as Poisson says
    assert np.percentile(ratio, 5) > 0.65 and np.percentile(ratio, 95) < 1.4
    # ten times the photons, ten times the variance (above the read noise)
    bright = make_fluo_field((256, 256), n_nuclei=0, background=10 * photons, seed=1)
    vb = bright.channel("DNA").astype(float).reshape(16, 16, 16, 16).swapaxes(1, 2)
    assert 8 < np.median(vb.reshape(256, 256).var(1, ddof=1)) / np.median(variance) < 12


def test_photons_set_the_signal_and_nuclei_stand_out(two_channel):
    f = two_channel
    dna = f.channel("DNA").astype(float) - DARK_OFFSET
    inside = np.median(dna[(f.labels > 0) & ~f.mask])
    outside = np.median(dna[ndi.distance_transform_edt(f.labels == 0) > 40])
    assert 300 < inside < 800  # photons=600, dimmer towards the corners
    assert outside < 40
    assert f.image.max() < 65535  # nothing saturates at the default photon count


def test_cytoplasm_surrounds_each_nucleus(two_channel):
    f = two_channel
    cyto = f.channel("cytoplasm").astype(float) - DARK_OFFSET
    nuclei = f.labels > 0
    dist = ndi.distance_transform_edt(~nuclei)
    ring = (dist > 2) & (dist < 6)
    far = dist > 45
    assert np.median(cyto[ring]) > 3 * np.median(cyto[far])
    assert np.median(cyto[nuclei & ~f.mask]) < 0.7 * np.median(cyto[ring])  # dye excluded


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shape": (32, 256)}, "at least 64"),
    ({"n_nuclei": -1}, "n_nuclei"),
    ({"n_channels": 3}, "n_channels must be 1 or 2"),
    ({"kinds": ("huge",)}, "kinds must be"),
    ({"kinds": ()}, "kinds must be"),
    ({"photons": 0}, "photons"),
    ({"anomaly_fraction": 1.5}, "anomaly_fraction"),
    ({"radius": (5.0, 3.0)}, "radius"),
    ({"touching": 2.0}, "touching"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_fluo_field(**kwargs)
