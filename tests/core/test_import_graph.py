"""The core's import graph: acyclic between modules and between packages, every package importing only the
layers docs/design.md allows, and no import of our own modules hidden inside a function (a dodged cycle)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "bagel_model"

# Layer -> the layers it may import (docs/design.md, "What each package may import"). Top-level modules are
# their own layer; a sub-package is one layer. "oom" and "remote" are layers being added on parallel branches
# (OOM handling, the remote backend); listing them here lets those merges keep this map.
ALLOWED = {
    "errors": set(),
    "config": set(),
    "devices": {"errors"},
    "model": {"config"},
    "text": {"errors"},
    "checkpoint": {"config", "devices", "errors", "model"},
    "generation": {"errors", "model", "text"},
    "testing": {"checkpoint", "config", "model"},
    "oom": set(),
    "pipeline": {"checkpoint", "devices", "errors", "generation", "model", "oom", "text"},
    "remote": {"errors", "generation", "pipeline"},
    "cli": {"checkpoint", "errors", "generation", "pipeline", "remote", "testing"},
    "__init__": {"errors", "pipeline", "testing"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _package_of(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).parts[:-1])
    return parts


def _resolve(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Our modules that ``node`` imports (dotted names relative to bagel_model)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name == "bagel_model" or a.name.startswith("bagel_model.")]
        return [n.removeprefix("bagel_model").lstrip(".") or "__init__" for n in names]
    if node.level == 0:
        if node.module != "bagel_model" and not (node.module or "").startswith("bagel_model."):
            return []
        base = node.module.removeprefix("bagel_model").lstrip(".")
    else:
        package = _package_of(path)
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        targets.append(candidate if candidate in MODULES else (base or "__init__"))
    return targets


def _imports(path: Path):
    """(target, at_module_level) for every import of our own modules (``if TYPE_CHECKING`` ones included: a
    type-only import that would close a cycle is a dodged cycle too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, top_level) for target in _resolve(path, child))
            nested = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, nested)

    visit(tree, True)
    return found


GRAPH = {name: {t for t, _ in _imports(path) if t != name} for name, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_import_resolves_to_a_module():
    unknown = {(m, t) for m, targets in GRAPH.items() for t in targets if t not in MODULES}
    assert not unknown


def test_no_import_of_our_modules_inside_a_function():
    local = [(name, target) for name, path in MODULES.items() for target, top in _imports(path) if not top]
    assert not local, f"function-local imports of bagel_model modules: {local}"


def test_module_graph_is_acyclic():
    assert _find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(_find_cycle(GRAPH))}"


def _layer_graph() -> dict[str, set[str]]:
    layers: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        own = _layer(module)
        layers.setdefault(own, set()).update(_layer(t) for t in targets if _layer(t) != own)
    return layers


def test_package_graph_is_acyclic():
    graph = _layer_graph()
    assert _find_cycle(graph) is None, f"package cycle: {' -> '.join(_find_cycle(graph))}"


def test_each_package_imports_only_the_layers_below_it():
    graph = _layer_graph()
    undescribed = sorted(set(graph) - set(ALLOWED))
    assert not undescribed, f"{undescribed} not in ALLOWED (and docs/design.md): say what they may import"
    wrong = {layer: sorted(targets - ALLOWED[layer]) for layer, targets in graph.items() if targets - ALLOWED[layer]}
    assert not wrong, f"imports outside the allowed layers: {wrong}"
    assert {"model", "text", "checkpoint", "generation", "pipeline"} <= set(graph)
