"""The written texts (README, docs, models/README) say what the code does.

Numbers and defaults written in prose would drift from the code silently; these tests tie each
one to where the code defines it.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from napari_cell_anomaly.cli import build_parser
from napari_cell_anomaly.core.model import ModelConfig
from napari_cell_anomaly.core.scoring import DEFAULT_FPR, DENSITY_KINDS, ScoringConfig
from napari_cell_anomaly.core.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
MODELS_README = (ROOT / "models" / "README.md").read_text(encoding="utf-8")


def _spans(text: str) -> list[str]:
    """Inline code spans of a Markdown text (fenced blocks left out), line breaks joined."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]


def _call(span: str, name: str) -> ast.Call | None:
    """The span parsed as a call of ``name`` (``Name(...)``, optional ``-> ...`` dropped)."""
    head = span.split(" -> ")[0].strip()
    if not head.startswith(name + "("):
        return None
    try:
        node = ast.parse(head, mode="eval").body
    except SyntaxError:
        return None
    return node if isinstance(node, ast.Call) else None


def _sections(text: str) -> dict[str, list[str]]:
    """Sections of architecture.md whose heading names ``core`` modules: body -> modules."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    out: dict[str, list[str]] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        modules = re.findall(r"`(core\.\w+)`", heading)
        if modules:
            out[body] = modules
    return out


def test_architecture_gives_model_config_defaults_as_the_code_has_them() -> None:
    calls = [c for s in _spans(ARCHITECTURE) if (c := _call(s, "ModelConfig"))]
    assert calls, "docs/architecture.md should state ModelConfig's defaults"
    defaults = ModelConfig()
    for call in calls:
        written = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        if not written:
            continue
        # Every field, each with the code's default value (widths as a tuple).
        assert written == {f.name: getattr(defaults, f.name)
                           for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize(("name", "module", "exact"), [
    ("ScoreResult", "napari_cell_anomaly.core.detector", True),
    ("TrainProgress", "napari_cell_anomaly.core.training", True),
    ("TrainConfig", "napari_cell_anomaly.core.training", False),
])
def test_architecture_lists_dataclass_fields_as_they_are(name: str, module: str,
                                                         exact: bool) -> None:
    fields = [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))]
    calls = [c for s in _spans(ARCHITECTURE) if (c := _call(s, name))]
    assert calls, f"docs/architecture.md should list the fields of {name}"
    for call in calls:
        written = [a.id for a in call.args if isinstance(a, ast.Name)]
        if exact:
            assert written == fields
        else:  # a leading part, then "..."
            assert written == fields[:len(written)]
            assert any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args)


def test_architecture_names_only_functions_that_exist() -> None:
    sections = _sections(ARCHITECTURE)
    named = {m for modules in sections.values() for m in modules}
    assert {"core.images", "core.model", "core.detector", "core.density"} <= named
    every = [importlib.import_module(f"napari_cell_anomaly.{m}") for m in sorted(named)]
    checked, problems = 0, []
    for body, module_names in sections.items():
        # The section's own modules first, then any module the document covers.
        modules = [importlib.import_module(f"napari_cell_anomaly.{m}")
                   for m in module_names] + every
        for span in _spans(body):
            m = re.match(r"(?:@dataclass(?:\(frozen=True\))? (?:class )?)?"
                         r"([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?\(", span)
            if not m or hasattr(builtins, m.group(1)):
                continue
            obj = next((getattr(mod, m.group(1)) for mod in modules
                        if hasattr(mod, m.group(1))), None)
            if obj is None:
                problems.append(f"{module_names} have no {m.group(1)} ({span})")
            elif m.group(2) and not hasattr(obj, m.group(2)):
                problems.append(f"{m.group(1)} has no {m.group(2)} ({span})")
            checked += 1
    assert not problems
    assert checked >= 20


def test_readme_cli_synopsis_lists_every_train_option() -> None:
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                 if a[0] == "train")[1]
    options = {o for a in train._actions for o in a.option_strings
               if o.startswith("--") and o not in ("--help", "--out")}
    block = README[README.index("cell-anomaly train"):README.index("cell-anomaly score")]
    missing = sorted(o for o in options if o not in block)
    assert not missing, f"README's train synopsis lacks {missing}"


def test_written_defaults_match_the_code() -> None:
    d = TrainConfig()
    # models/README.md documents how the shipped model was trained: the CLI's defaults.
    assert f"seed {d.seed}, {d.epochs} epochs, {d.size} px" in MODELS_README
    assert f"(default {100 * DEFAULT_FPR:g}%)" in README
    # Any density a text names in Python syntax is one the code knows.
    for text in (README, ARCHITECTURE, MODELS_README):
        for kind in re.findall(r'density="([^"]+)"', text):
            assert kind in DENSITY_KINDS, kind
    assert ScoringConfig().density in DENSITY_KINDS
    from napari_cell_anomaly.core import density

    assert re.search(rf'``"{ScoringConfig().density}"`` \(:class:`\w+`, the default\)',
                     density.__doc__ or "")
    align = ModelConfig().align  # one latent code vector per align x align pixel block
    assert f"one vector per {align} × {align} pixel block" in README
    # Robust training's adversarial prior is described as off by default.
    assert "off by default" in README[README.index("robust training"):][:600]
    assert d.prior_weight == 0.0


def test_architecture_lists_exactly_the_widget_modules() -> None:
    block = ARCHITECTURE.split("  widgets/", 1)[1].split("\n  cli.py", 1)[0]
    written = set(re.findall(r"^    (_\w+\.py)\b", block, flags=re.M))
    package = ROOT / "src" / "napari_cell_anomaly" / "widgets"
    existing = {p.name for p in package.glob("_*.py") if p.name != "__init__.py"}
    assert written == existing
    # Each line's class names its module's class (e.g. "_cells_results.py CellsResults:").
    for module, name in re.findall(r"^    (_\w+)\.py\s+([A-Z]\w+):", block, flags=re.M):
        mod = importlib.import_module(f"napari_cell_anomaly.widgets.{module}")
        assert hasattr(mod, name), f"{module} has no {name}"
