"""The library's import structure, read from its source with `ast` (nothing is imported).

Imports run one way, down this list of layers; modules of one layer import each other only inside the
same group (a package or a set of modules that belong together). Every import counts, also one inside a
function, and the lazy name tables of the package `__init__` files. Also checked: no import cycle between
modules, and no private name (`_x`) taken from another module of the library.

    python tests/test_architecture.py [ROOT]                      # the same checks, printed, for any checkout
    python tests/test_architecture.py --draw docs/architecture/layers.png   # the docs' picture
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Folders of the repository and the package names they are installed as (see setup.py).
SOURCES = {"efficientnet_tf": "efficientnet_tf", "hparams": "efficientnet_tf.hparams",
           "data": "efficientnet_tf.data", "export": "efficientnet_tf.export"}
SKIPPED_FOLDERS = {"imagenette_mini", "__pycache__"}

# Lowest first. A group is a list of module names; a name covers its submodules unless it is a package
# `__init__` named exactly (marked "=").
LAYERS: list[tuple[str, list[list[str]]]] = [
    ("base", [["efficientnet_tf.errors"], ["efficientnet_tf.version"], ["efficientnet_tf.lazy"]]),
    ("model core", [["efficientnet_tf.models.scaling", "efficientnet_tf.models.layers",
                     "efficientnet_tf.models.normalization", "efficientnet_tf.models.fake_quant"]]),
    ("weight import", [["efficientnet_tf.models.weights"]]),
    ("model library", [["efficientnet_tf.models.builder", "efficientnet_tf.models.counting",
                        "efficientnet_tf.models.ema", "efficientnet_tf.models.quantize", "=efficientnet_tf.models"]]),
    ("configuration", [["efficientnet_tf.hparams"]]),
    ("runs, data, evaluation report", [["efficientnet_tf.rundir"], ["efficientnet_tf.runlock"], ["efficientnet_tf.evaluation_report"],
                             ["efficientnet_tf.gradcam"], ["efficientnet_tf.data"]]),
    ("models from runs", [["efficientnet_tf.run_model"]]),
    ("training, export", [["efficientnet_tf.training"], ["efficientnet_tf.export"]]),
    ("prediction", [["efficientnet_tf.prediction"]]),
    ("application", [["efficientnet_tf.app"]]),
    ("scaling study", [["efficientnet_tf.study"]]),
    ("command line", [["efficientnet_tf.cli", "efficientnet_tf.__main__", "=efficientnet_tf"]]),
]

# Imports of library modules inside a function, each with its reason. Anything else is imported at the
# top of its module (a function may still import a heavy optional package: matplotlib, mediapipe, ...).
DEFERRED = {
    ("efficientnet_tf.cli", "efficientnet_tf.app"): "TensorFlow starts only after the flags are checked",
    ("efficientnet_tf.cli", "efficientnet_tf.training"): "TensorFlow starts only after the flags are checked",
    ("efficientnet_tf.cli", "efficientnet_tf.export"): "TensorFlow starts only after the flags are checked",
    ("efficientnet_tf.cli", "efficientnet_tf.prediction"): "TensorFlow starts only after the flags are checked",
}
LAZY_TABLES = ("_LAZY", "LAZY_NAMES")  # a package __init__'s {public name: module} tables, loaded on first use


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    local: bool  # inside a function
    names: tuple[str, ...] = ()  # names taken with `from target import ...`


def module_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Module name -> file, for every library module under `root`."""
    modules = {}
    for folder, package in SOURCES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base)
            if SKIPPED_FOLDERS & set(relative.parts):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: pathlib.Path, modules: set[str]) -> list[Import]:
    """Every import of a library module by module `name` (file `path`), with where it is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "efficientnet_tf":
                        found.append(Import(name, alias.name, child.lineno, local))
            elif isinstance(child, ast.ImportFrom):
                source = _resolve(name, is_package, child)
                if source.split(".")[0] != "efficientnet_tf":
                    continue
                taken = [a.name for a in child.names]
                submodules = [t for t in taken if f"{source}.{t}" in modules]
                for t in submodules:
                    found.append(Import(name, f"{source}.{t}", child.lineno, local))
                rest = tuple(t for t in taken if t not in submodules)
                if rest:
                    found.append(Import(name, source, child.lineno, local, rest))
            elif (isinstance(child, ast.Assign) and is_package and not local
                  and any(isinstance(t, ast.Name) and t.id in LAZY_TABLES for t in child.targets)
                  and isinstance(child.value, ast.Dict)):
                for value in child.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.append(Import(name, value.value, value.lineno, False))
            visit(child, inner)

    visit(tree, False)
    return found


def _member(module: str, entry: str) -> bool:
    if entry.startswith("="):
        return module == entry[1:]
    return module == entry or module.startswith(entry + ".")


def place(module: str) -> tuple[int, int] | None:
    """(layer index, group index) of a module; None when no layer names it."""
    best = None
    for li, (_, groups) in enumerate(LAYERS):
        for gi, group in enumerate(groups):
            for entry in group:
                if _member(module, entry):
                    length = len(entry.lstrip("="))
                    if best is None or length > best[0]:
                        best = (length, li, gi)
    return None if best is None else best[1:]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a path around it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def problems(root: pathlib.Path = ROOT) -> list[str]:
    """Every breach of the rules above in the checkout at `root`, one line each."""
    files = module_files(root)
    modules = set(files)
    imports = [i for name, path in files.items() for i in imports_of(name, path, modules)]
    out: list[str] = []
    graph: dict[str, set[str]] = {}
    for i in imports:
        target = i.target if i.target in modules else next(
            (m for m in sorted(modules, key=len, reverse=True) if i.target.startswith(m + ".")), i.target)
        if target != i.importer:
            graph.setdefault(i.importer, set()).add(target)
        where = f"{i.importer} (line {i.line}{', inside a function' if i.local else ''})"
        for taken in i.names:
            if taken.startswith("_") and not taken.startswith("__") and target != i.importer:
                out.append(f"{where} imports the private name {taken} from {target}")
        if i.local and (i.importer, target) not in DEFERRED and not any(
                (i.importer, target.rsplit(".", k)[0]) in DEFERRED for k in range(1, target.count(".") + 1)):
            out.append(f"{where} imports {target} inside a function; import it at the top of the module")
        a, b = place(i.importer), place(target)
        if a is None or b is None:
            missing = i.importer if a is None else target
            out.append(f"{missing} is in no layer of tests/test_architecture.py LAYERS")
            continue
        if b[0] > a[0] or (b[0] == a[0] and b[1] != a[1]):
            out.append(f"{where} imports {target}: layer '{LAYERS[a[0]][0]}' may not import layer "
                       f"'{LAYERS[b[0]][0]}'" + (" (a sibling group)" if b[0] == a[0] else " (above it)"))
    for name, path in files.items():
        out += _private_attributes(name, path, modules)
    for component in _cycles(graph):
        out.append("import cycle between " + ", ".join(component))
    return sorted(set(out))


def _private_attributes(name: str, path: pathlib.Path, modules: set[str]) -> list[str]:
    """`module._x` where `module` is another library module bound by an import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("efficientnet_tf"):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    bound[alias.asname] = alias.name
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != name):
            out.append(f"{name} (line {node.lineno}) uses the private name {node.attr} of {bound[node.value.id]}")
    return out


def test_imports_run_one_way_without_cycles_or_private_names() -> None:
    found = problems()
    assert not found, f"{len(found)} breaches of the import rules:\n" + "\n".join(found)


def test_every_library_module_has_a_layer_and_stays_under_600_lines() -> None:
    files = module_files(ROOT)
    assert len(files) > 60  # the walk found the library, not an empty folder
    unplaced = [name for name in files if place(name) is None]
    assert not unplaced, f"modules in no layer: {unplaced}"
    long = {name: n for name, path in files.items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"


def test_the_checker_sees_a_cycle_an_upward_import_and_a_private_name(tmp_path) -> None:
    """The rules fail where they should: a small tree with one breach of each kind."""
    package = tmp_path / "efficientnet_tf"
    (package / "models").mkdir(parents=True)
    for folder in ("hparams", "data", "export"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("from efficientnet_tf.models.scaling import _table\n")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "scaling.py").write_text("_table = {}\n\ndef f():\n    from efficientnet_tf import errors\n")
    found = problems(tmp_path)
    text = "\n".join(found)
    assert "import cycle between efficientnet_tf.errors, efficientnet_tf.models.scaling" in text
    assert "imports the private name _table from efficientnet_tf.models.scaling" in text
    assert "layer 'base' may not import layer 'model core' (above it)" in text
    assert "inside a function; import it at the top" in text


def draw(path: pathlib.Path, root: pathlib.Path = ROOT) -> None:
    """The layers as rows of groups (modules and lines of each), with how many imports run between layers."""
    import matplotlib  # only the picture needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    files = module_files(root)
    modules = set(files)
    sizes: dict[tuple[int, int], list[int]] = {}
    for name, file in files.items():
        sizes.setdefault(place(name), []).append(len(file.read_text(encoding="utf-8").splitlines()))
    between: dict[tuple[int, int], int] = {}
    for name, file in files.items():
        for i in imports_of(name, file, modules):
            a, b = place(i.importer), place(i.target if i.target in modules else i.importer)
            if a and b and a[0] != b[0]:
                between[(a[0], b[0])] = between.get((a[0], b[0]), 0) + 1
    rows = len(LAYERS)
    fig, ax = plt.subplots(figsize=(13, 0.75 * rows + 0.8))
    for li, (title, groups) in enumerate(LAYERS):
        y = li  # the base at the bottom
        ax.text(-0.02, y, title, ha="right", va="center", fontsize=10, weight="bold")
        width = 1.0 / len(groups)
        for gi, group in enumerate(groups):
            x = gi * width
            ax.add_patch(plt.Rectangle((x + 0.005, y - 0.35), width - 0.01, 0.7, facecolor="#dbe7f3",
                                       edgecolor="#4a6f96"))
            names = ", ".join(g.lstrip("=").removeprefix("efficientnet_tf.").removeprefix("efficientnet_tf")
                              or "efficientnet_tf" for g in group)
            counts = sizes.get((li, gi), [])
            ax.text(x + width / 2, y + 0.08, names, ha="center", va="center", fontsize=8)
            ax.text(x + width / 2, y - 0.2, f"{len(counts)} module{'s' if len(counts) != 1 else ''}, {sum(counts):,} lines", ha="center",
                    va="center", fontsize=7, color="#555555")
        down = sum(n for (a, b), n in between.items() if a == li)
        ax.text(1.01, y, f"{down} imports down" if down else "", ha="left", va="center", fontsize=8)
    ax.set_xlim(-0.25, 1.12)
    ax.set_ylim(-0.6, rows - 0.4)
    ax.axis("off")
    ax.set_title("efficientnet_tf: a module imports only from layers below its own (or from its own group)",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--draw":
        draw(pathlib.Path(sys.argv[2]))
        sys.exit(0)
    lines = problems(pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    print("\n".join(lines) or "no breaches")
    sys.exit(1 if lines else 0)
