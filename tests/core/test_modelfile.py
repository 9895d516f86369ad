"""Tests for ``napari_cell_anomaly.core.modelfile``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save

from napari_cell_anomaly.core.modelfile import (
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    load_file,
    save_file,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    weights[0, 0, 0, 0] = np.nan
    weights[0, 0, 0, 1] = -0.0
    weights[0, 0, 0, 2] = np.inf
    return {
        "encoder.0.weight": weights,
        "encoder.0.bias": rng.standard_normal(4).astype(np.float32),
        "density.index": rng.integers(-(2**62), 2**62, size=(5, 2), dtype=np.int64),
        "density.mask": rng.random((3, 7)) > 0.5,
        "calibration.scores": rng.standard_normal(11),  # float64
        "scalar": np.array(3, dtype=np.int64),
        "empty": np.zeros((0, 4), np.float32),
    }


def _meta() -> dict:
    return {
        "model": {"preset": "default", "widths": [24, 48, 96], "latent_channels": 16},
        "preprocessing": {"channels": "rgb", "low": 0.0, "high": 255.0},
        "thresholds": {"fpr": [0.01, 0.05], "values": [1.5, 1.25e-7]},
        "notes": "cellules anormales — ünïcode ✓",
        "trained": True,
        "parent": None,
        "nested": [{"a": [1, [2, [3, {"b": None}]]]}],
    }


def _assert_one_line_naming(err: ModelFileError, path: Path) -> str:
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert str(path) in text
    return text


def _saved(tmp_path: Path, name: str = "model.cna") -> Path:
    path = tmp_path / name
    save_file(path, _tensors(), _meta())
    return path


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


# --------------------------------------------------------------------------- round trip


def test_round_trip_is_bit_exact(tmp_path):
    path = _saved(tmp_path)
    tensors, meta = load_file(path)
    expected = _tensors()
    assert set(tensors) == set(expected)
    for name, array in expected.items():
        got = tensors[name]
        assert got.dtype == array.dtype, name
        assert got.shape == array.shape, name
        assert got.tobytes() == array.tobytes(), name
        assert got.flags.writeable
    assert meta == _meta()


def test_round_trip_accepts_str_path_and_odd_layouts(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {
        "transposed": base.T,  # not C-contiguous
        "strided": base[:, ::2],
        "big_endian": np.arange(5, dtype=">f8"),
        "u8": np.arange(256, dtype=np.uint8),
    }
    save_file(str(tmp_path / "m.cna"), tensors, {"tuple": (1, 2), "np": np.float32(0.5)})
    loaded, meta = load_file(str(tmp_path / "m.cna"))
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
    assert loaded["big_endian"].dtype == np.float64
    assert meta == {"tuple": [1, 2], "np": 0.5}


def test_empty_tensors_and_meta(tmp_path):
    path = tmp_path / "empty.cna"
    save_file(path, {}, {})
    assert load_file(path) == ({}, {})


def test_overwrite_replaces_file(tmp_path):
    path = _saved(tmp_path)
    save_file(path, {"x": np.ones(3, np.float32)}, {"version": 2})
    tensors, meta = load_file(path)
    assert list(tensors) == ["x"] and meta == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cna"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_file_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = _saved(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_file_layout_is_plain_safetensors(tmp_path):
    # The header can be read by any safetensors reader; metadata values are strings.
    from safetensors import safe_open

    path = _saved(tmp_path)
    with safe_open(str(path), framework="numpy") as f:
        info = f.metadata()
    assert info["format"] == FORMAT
    assert info["format_version"] == str(FORMAT_VERSION)
    assert len(info["digest"]) == 64
    assert set(info) == {"format", "format_version", "meta", "digest"}


# --------------------------------------------------------------------------- atomic save


def test_save_into_missing_folder(tmp_path):
    path = tmp_path / "nope" / "model.cna"
    with pytest.raises(ModelFileError) as info:
        save_file(path, _tensors(), _meta())
    text = _assert_one_line_naming(info.value, path)
    assert "does not exist" in text
    assert not (tmp_path / "nope").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.skipif(IS_ROOT, reason="root ignores directory permissions")
def test_save_into_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    path = folder / "model.cna"
    try:
        with pytest.raises(ModelFileError) as info:
            save_file(path, _tensors(), _meta())
        text = _assert_one_line_naming(info.value, path)
        assert text.startswith(f"cannot write model file '{path}'")
        assert "Permission denied" in text
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_failed_save_keeps_old_file_intact(tmp_path):
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ModelFileError) as info:
        save_file(path, {"x": np.zeros(3)}, {"bad": {1, 2, 3}})
    text = _assert_one_line_naming(info.value, path)
    assert "not JSON-serialisable" in text and "set" in text
    assert path.read_bytes() == before
    assert load_file(path)[1] == _meta()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cna"]


def test_failed_save_of_unsupported_tensor(tmp_path):
    path = tmp_path / "model.cna"
    with pytest.raises(ModelFileError) as info:
        save_file(path, {"x": np.array([object()], dtype=object)}, {})
    _assert_one_line_naming(info.value, path)
    with pytest.raises(ModelFileError, match="not a numpy array"):
        save_file(path, {"x": [1, 2, 3]}, {})
    with pytest.raises(ModelFileError, match="meta must be a dict"):
        save_file(path, {}, ["not", "a", "dict"])
    assert list(tmp_path.iterdir()) == []


def test_failure_after_temp_file_removes_temp_file(tmp_path):
    # The destination is a non-empty folder: the temporary file is written completely, then
    # os.replace fails. The temporary file must not be left behind. (Works as root too.)
    target = tmp_path / "model.cna"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ModelFileError) as info:
        save_file(target, _tensors(), _meta())
    text = _assert_one_line_naming(info.value, target)
    assert text.startswith(f"cannot write model file '{target}': ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cna"]
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "missing.cna"
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert "does not exist" in _assert_one_line_naming(info.value, path)
    assert info.value.path == path


def test_directory(tmp_path):
    with pytest.raises(ModelFileError) as info:
        load_file(tmp_path)
    assert "is a folder" in _assert_one_line_naming(info.value, tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.cna"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert "is empty" in _assert_one_line_naming(info.value, path)


@pytest.mark.parametrize("where", ["prefix", "header", "data", "last_byte"])
def test_truncated_file(tmp_path, where):
    path = _saved(tmp_path)
    data = path.read_bytes()
    cut = {
        "prefix": 5,
        "header": _header_end(data) // 2,
        "data": (_header_end(data) + len(data)) // 2,
        "last_byte": len(data) - 1,
    }[where]
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    text = _assert_one_line_naming(info.value, path)
    if where == "prefix":
        assert f"is not a {FORMAT} model file" in text
    else:
        assert "is truncated" in text


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "random.cna"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert f"is not a {FORMAT} model file" in _assert_one_line_naming(info.value, path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(100),  # an image
        b'{"json": "but not safetensors"}',
        b"\x02\x00\x00\x00\x00\x00\x00\x00{}",  # valid framing, empty header
        b"\x04\x00\x00\x00\x00\x00\x00\x00[1 ]",  # header is not an object
    ],
)
def test_other_files(tmp_path, content):
    path = tmp_path / "other.cna"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert f"not a {FORMAT} model file" in _assert_one_line_naming(info.value, path)


def test_pickle_is_refused_without_being_executed(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, path)
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert f"is not a {FORMAT} model file" in _assert_one_line_naming(info.value, path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(st_save({"w": np.ones(3, np.float32)}))
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert f"not a {FORMAT} model file" in _assert_one_line_naming(info.value, path)

    path.write_bytes(st_save({"w": np.ones(3, np.float32)}, metadata={"format": "pt"}))
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert f"is not a {FORMAT} model file (format 'pt')" in _assert_one_line_naming(
        info.value, path
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {"format": FORMAT, "meta": "{}", "digest": "0" * 64},  # no version
        {"format": FORMAT, "format_version": "one", "meta": "{}", "digest": "0" * 64},
        {"format": FORMAT, "format_version": "0", "meta": "{}", "digest": "0" * 64},
        {"format": FORMAT, "format_version": "1", "meta": "{}"},  # no digest
        {"format": FORMAT, "format_version": "1", "digest": "0" * 64},  # no meta
    ],
)
def test_invalid_metadata(tmp_path, metadata):
    path = tmp_path / "bad.cna"
    path.write_bytes(st_save({"w": np.ones(3, np.float32)}, metadata=metadata))
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert "has invalid metadata" in _assert_one_line_naming(info.value, path)


def test_tampered_tensor_byte(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    start = _header_end(data)
    assert len(data) > start  # there is a data section
    for offset in (start, (start + len(data)) // 2, len(data) - 1):
        tampered = data.copy()
        tampered[offset] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(ModelFileError) as info:
            load_file(path)
        text = _assert_one_line_naming(info.value, path)
        assert text.endswith("has been modified or corrupted (checksum mismatch)")


def test_tampered_meta(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    assert data.count(b"latent_channels") == 1
    # Same length, so the safetensors framing stays valid: only the digest can tell.
    path.write_bytes(data.replace(b'\\"latent_channels\\":16', b'\\"latent_channels\\":99'))
    assert path.read_bytes() != data
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    assert "checksum mismatch" in _assert_one_line_naming(info.value, path)


def test_tampered_digest(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    end = _header_end(data)
    digest_at = data.index(b'"digest":"', 0, end) + len(b'"digest":"')
    old = data[digest_at : digest_at + 1]
    new = b"0" if old != b"0" else b"1"
    path.write_bytes(data[:digest_at] + new + data[digest_at + 1 :])
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_file(path)


def test_newer_format_version(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    marker = f'"format_version":"{FORMAT_VERSION}"'.encode()
    assert data.count(marker) == 1
    path.write_bytes(data.replace(marker, f'"format_version":"{FORMAT_VERSION + 1}"'.encode()))
    with pytest.raises(ModelFileError) as info:
        load_file(path)
    text = _assert_one_line_naming(info.value, path)
    assert text.endswith(
        f"was written by a newer napari-cell-anomaly (format {FORMAT_VERSION + 1}; "
        f"this version reads up to {FORMAT_VERSION})"
    )


def test_error_is_plain_exception_with_one_line():
    err = ModelFileError("model file 'a\nb' is\r\nbroken", "a")
    assert str(err) == "model file 'a b' is broken"
    assert err.path == Path("a")
    assert isinstance(err, Exception)
