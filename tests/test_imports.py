"""The house rules on imports, checked in fresh interpreters.

Layers run downhill: manifests < filters, models < curation, training. A scorer or model never
imports the pipeline; loading a config imports no torch; the commands that only read tables
import none of the heavy libraries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "transformers", "cv2", "ray")


def modules_after(code: str) -> set[str]:
    """Names in sys.modules after running `code` in a fresh interpreter at the repo root."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def packages(mods: set[str], *names: str) -> set[str]:
    """Which of the top-level packages `names` appear among the imported modules."""
    return {m.split(".")[0] for m in mods} & set(names)


def all_modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
    )


@pytest.mark.parametrize("package, forbidden", [
    ("manifests", ("filters", "models", "curation", "training")),
    ("filters", ("curation", "training")),
    ("models", ("curation", "training")),
])
def test_layers_import_downhill(package, forbidden):
    # Import every module of the package at once: if any reaches up, the upper package shows.
    code = "\n".join(f"import {m}" for m in all_modules(package))
    leaked = packages(modules_after(code), *forbidden)
    assert not leaked, f"{package} imports {sorted(leaked)}"


@pytest.mark.parametrize("code", [
    "from curation.config import load_config; load_config('configs/offline.yaml')",
    "from curation.config import load_config; load_config('configs/default.yaml')",
    "from training.config import load_train_config; load_train_config('configs/offline.yaml')",
])
def test_config_load_imports_no_heavy_library(code):
    leaked = packages(modules_after(code), *HEAVY)
    assert not leaked, f"a config load imports {sorted(leaked)}"


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["sql", "--root", "{root}", "SELECT 1"],
    ["status", "--root", "{root}"],
    ["summary", "--root", "{root}"],
    ["verify", "--root", "{root}"],
    ["filter", "--config", "configs/offline.yaml", "--root", "{root}"],
    ["filter", "--config", "configs/offline.yaml", "--root", "{root}", "--dry-run"],
])
def test_table_commands_import_no_heavy_library(tmp_path, argv):
    argv = [a.format(root=tmp_path) for a in argv]
    code = (
        "import contextlib, io, sys\nfrom curation.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
    )
    leaked = packages(modules_after(code), *HEAVY)
    assert not leaked, f"reelsift {' '.join(argv)} imports {sorted(leaked)}"


def test_a_stage_small_enough_to_run_inline_imports_no_ray(tmp_path):
    from tests.media import make_video

    make_video(tmp_path / "in" / "a.mp4", n_frames=24, size=(64, 48), kind="moving")
    argv = ["ingest", "--config", "configs/offline.yaml", "--input", str(tmp_path / "in"),
            "--root", str(tmp_path / "root"), "--set", "ray.inline_max_items=8"]
    code = (
        "import contextlib, io\nfrom curation.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({argv!r}) == 0"
    )
    mods = modules_after(code)
    assert "curation.inline" in mods, "the stage ran inline"
    assert not packages(mods, "ray"), "an inline stage imported Ray"


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> first-party modules it imports anywhere in its source (top level, inside a
    function, under TYPE_CHECKING): a lazy import is still a dependency."""
    import ast

    files = {m: ROOT / (m.replace(".", "/") + ".py") for p in packages for m in all_modules(p)}
    files |= {m: ROOT / m.replace(".", "/") / "__init__.py" for m in files
              if not files[m].exists()}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        graph[mod] = deps - {None, mod}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            v, deps = work[-1]
            w = next(deps, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = stack[stack.index(v):]
                    del stack[stack.index(v):]
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in stack:
                low[v] = min(low[v], index[w])
    return found


def test_no_import_circles():
    graph = import_graph(("manifests", "filters", "models", "curation", "training", "bench"))
    assert circles(graph) == [], "modules that import each other (directly or in a ring)"


def test_circle_finder_sees_a_lazy_ring():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert circles(graph) == [["a", "b", "c"]]
