"""The codebase's shape, checked rather than described (docs/design.md): no import cycle anywhere
(imports inside functions included), each layer imports only its own and the layers below it, and
no module grows past LINES lines."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"mindref": ROOT / "mindref", "mindref.export": ROOT / "export"}
# the layers, bottom up (docs/design.md): a module may import its own layer and the ones below
LAYERS = [
    ("package", {"mindref"}),
    ("core", {"checks", "softmax", "squash", "routing", "attention", "dense", "embedding", "sparse",
              "samplers",
              "sampled_softmax", "max_score_loss", "allocator", "adam", "data", "readers",
              "datasets",
              "evaluate", "baselines", "model", "outputs", "progress"}),
    ("training and the kit", {"train", "checkpoint", "runs", "compare", "tuning", "conformance",
                              "diagnosis"}),
    ("serving", {"export"}),
    ("command line", {"cli", "commands", "__main__"}),
]
LINES = 400


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The mindref modules `name` imports, anywhere in the file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[:len(name.split(".")) - node.level + is_package]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import name`, the module
            candidates = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                          for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known}
    return found - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> int:
    short = name.removeprefix("mindref.").split(".")[0] if name != "mindref" else "mindref"
    return next(rank for rank, (_, members) in enumerate(LAYERS) if short in members)


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if not any(
        (name.removeprefix("mindref.").split(".")[0] if name != "mindref" else "mindref") in members
        for _, members in LAYERS)]
    assert not unplaced, f"add {unplaced} to a layer here and in docs/design.md"


def test_no_import_cycle():
    edges = graph()
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_each_layer_imports_only_itself_and_below():
    wrong = [f"{name} ({LAYERS[layer(name)][0]}) imports {other} ({LAYERS[layer(other)][0]})"
             for name, others in graph().items() for other in sorted(others) if layer(other) > layer(name)]
    assert not wrong, "\n".join(wrong)


def test_no_module_is_longer_than_the_limit():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > LINES}
    assert not long, f"split these by concern (at most {LINES} lines each): {long}"
