"""The command line imports only what a command needs (start-up time).

Each check runs in a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cell_anomaly.core.detector import default_model_path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> dict[str, bool]:
    """Run ``code`` (which calls the CLI) in a new interpreter; which heavy modules it
    imported."""
    probe = (f"import sys\n{code}\nimport json\n"
             "print(json.dumps({m: m in sys.modules for m in "
             "('torch', 'sklearn', 'scipy.stats', 'pandas')}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["train", "in", "--out", "m", "--epochs", "x"],
                                  ["score", "model.safetensors"], ["evaluate"]])
def test_help_and_argument_errors_do_not_import_torch(argv: list[str]) -> None:
    code = ("from napari_cell_anomaly.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n"
            "    assert exc.code in (0, 2), exc.code")
    loaded = _modules_after(code)
    assert not loaded["torch"] and not loaded["sklearn"]


def test_scoring_does_not_import_scikit_learn(tmp_path: Path) -> None:
    model = default_model_path()
    if model is None:
        pytest.skip("this installation has no shipped default model")
    import imageio.v3 as iio

    from napari_cell_anomaly.core.sample import make_cells

    iio.imwrite(tmp_path / "cell.png", make_cells(1, size=64, seed=0).images[0])
    argv = ["score", str(model), str(tmp_path / "cell.png"), "--csv",
            str(tmp_path / "s.csv"), "--heatmaps", str(tmp_path / "maps"), "--quiet"]
    loaded = _modules_after(f"from napari_cell_anomaly.cli import main\n"
                            f"assert main({argv!r}) == 0")
    assert loaded["torch"]
    assert not loaded["sklearn"] and not loaded["scipy.stats"] and not loaded["pandas"]
    assert (tmp_path / "maps" / "cell_anomaly_map.tif").is_file()
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(",")[1]))
