"""One installed namespace: nothing generic at the top level, and the code follows tune -> model -> data -> core."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# folder -> the installed package it becomes, lowest layer first: a module may import only its own layer or lower.
LAYERS = {"core": "genre_sweep", "data": "genre_sweep.data", "model": "genre_sweep.model", "tune": "genre_sweep.tune"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_users_own_model_data_and_tune_stay_theirs(tmp_path):
    (tmp_path / "model.py").write_text("WHO = 'the user'\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("WHO = 'the user'\n")
    (tmp_path / "tune.py").write_text("WHO = 'the user'\n")
    console = Path(sys.executable).parent / "genre-sweep"
    done = _run([str(console), "--help"], tmp_path)
    assert done.returncode == 0 and "jobs:" in done.stdout, done.stderr
    code = (
        "import model, data, tune\n"
        "from genre_sweep.model.export import export_model, load_exported\n"
        "from genre_sweep.data.shards import open_dataset\n"
        "from genre_sweep.tune.space import load_space\n"
        "from genre_sweep import __version__\n"
        "print(model.WHO, data.WHO, tune.WHO, __version__)\n"
    )
    done = _run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:6] == ["the", "user"] * 3


def test_nothing_generic_is_installed_at_the_top_level(tmp_path):
    code = "import importlib.util as u; print([n for n in ('data', 'model', 'tune', 'core') if u.find_spec(n)])"
    done = _run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert importlib.util.find_spec("genre_sweep.tune.sweep").origin == str(ROOT / "tune" / "sweep.py")


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join([LAYERS[folder], *rest])
    return name.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every genre_sweep module ``path`` imports, at the top or inside a function (a lazy import counts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == "genre_sweep"}


def _graph() -> dict[str, set[str]]:
    files = [p for folder in LAYERS for p in sorted((ROOT / folder).rglob("*.py"))]
    modules = {_module_name(p): p for p in files}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> int:
    return max(i for i, pkg in enumerate(LAYERS.values()) if module == pkg or module.startswith(pkg + "."))


def test_every_import_points_down_the_layers():
    wrong = [(m, d) for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert not wrong, f"imports against tune -> model -> data -> core: {wrong}"


def test_there_is_no_import_cycle_even_through_lazy_imports():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"
    assert len(graph) > 30  # the walk saw the whole tree
