"""The package's imports point one way, and every module imports in a fresh interpreter.

Layers, lowest first (a module may import its own layer and the ones below, never above;
imports inside functions count, since they run too):

0 capture   ``capture/`` and the helpers it shares (errors, inputs, targets, zoo, ...)
1 perturb   ``perturb/``: the only code that runs the model on altered inputs
2 explainers  ``explainers/``, ``explanation``
3 interventions/api  ``api``, ``interventions``, ``lens``, ``attribution``, ``patching``
4 metrics   ``metrics/``, ``evaluation``, ``counterfactual_search`` (explains with ``api``), ``viz``
5 widget    ``widget/`` and the applications over everything (survey, cli, report, the top level)
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "vit_explore"

ORDER = ("capture", "perturb", "explainers", "interventions/api", "metrics", "widget")
LAYERS: dict[str, str] = {
    **dict.fromkeys([
        "capture", "errors", "_version", "_checks", "_modules", "_recent", "_files", "inputs", "inputs_hf", "targets",
        "zoo", "zoo_hf", "zero_shot", "datasets", "testing",
    ], "capture"),
    "perturb": "perturb",
    **dict.fromkeys(["explainers", "explanation"], "explainers"),
    **dict.fromkeys(["api", "interventions", "lens", "attribution", "patching"], "interventions/api"),
    **dict.fromkeys(["metrics", "evaluation", "counterfactual_search", "viz"], "metrics"),
    **dict.fromkeys(["widget", "survey", "cli", "report", "train_toy", "_lab", "__init__"], "widget"),
}


def _modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), p))
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute vit_explore module or name) of every import in the file, at any depth."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                mod = ".".join(base + ([n.module] if n.module else []))
            else:
                mod = n.module or ""
            names = [mod + "." + a.name for a in n.names] if mod == "vit_explore" else [mod]
            found += [(n.lineno, m) for m in names]
        elif isinstance(n, ast.Import):
            found += [(n.lineno, a.name) for a in n.names]
    return [(ln, m) for ln, m in found if m == "vit_explore" or m.startswith("vit_explore.")]


def test_every_module_has_a_layer():
    units = {_unit(m) for m, _ in _modules()}
    assert units - set(LAYERS) == set(), "place the new module in a layer of tests/test_layers.py"
    assert set(LAYERS.values()) == set(ORDER)


def test_no_import_points_up():
    rank = {name: i for i, name in enumerate(ORDER)}
    up = []
    for module, path in _modules():
        here = rank[LAYERS[_unit(module)]]
        for line, target in _imports(module, path):
            unit = _unit(target)
            unit = unit if unit in LAYERS else "__init__"  # a name of the top-level package (``__version__``)
            if rank[LAYERS[unit]] > here:
                up.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[_unit(module)]}) imports {target} ({LAYERS[unit]})")
    assert up == []


def test_the_walk_sees_an_upward_import(tmp_path):
    """The checker itself: a function-level import of the explain API from perturb is found."""
    f = tmp_path / "fake.py"
    f.write_text("def f():\n    from ..api import explain\n    return explain\n")
    assert _imports("vit_explore.perturb.fake", f) == [(2, "vit_explore.api")]


def test_every_module_imports_in_a_fresh_interpreter():
    """One interpreter per batch of modules; before each module every ``vit_explore`` module is
    forgotten, so each is imported as a fresh process would (torch and timm stay loaded)."""
    names = [m for m, _ in _modules()]
    code = (
        "import importlib, sys, traceback\n"
        "bad = []\n"
        f"for name in {names!r}:\n"
        "    for k in [k for k in sys.modules if k == 'vit_explore' or k.startswith('vit_explore.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        bad.append(name + ': ' + traceback.format_exc(limit=-2))\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("stmt", [
    "import vit_explore.counterfactual_search as m; assert callable(m.counterfactual)",
    "import vit_explore.perturb as p; import vit_explore.interventions as i; assert i.MODES == p.MODES",
])
def test_fresh_interpreter(stmt):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", stmt], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
