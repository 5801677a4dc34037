"""The architecture's rules, checked on the source: imports point one way, rooms stay small, config keys are read
directly (their defaults live in semrel_jax/config/defaults.py and the dataset modules, nowhere else)."""

import pathlib
import re

import semrel_jax

ROOT = pathlib.Path(semrel_jax.__file__).parent
# Package files allowed past ~400 lines because each is one concept (a generator, a file format).
LONG_FILES = {"data/sort_of_clevr.py": 600, "data/tfds_copy.py": 600}


def _imports(path: str, module: str, is_package: bool, modules: set) -> set:
    """The semrel_jax modules ``module`` imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import semrel_jax.a.b` -> the longest known module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def _cycles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _graph() -> dict[str, set[str]]:
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = (str(path), parts[-1] == "__init__")
    return {name: _imports(path, name, is_package, set(files)) for name, (path, is_package) in files.items()}


def test_no_import_cycle_among_semrel_jax_modules():
    graph = _graph()
    assert "semrel_jax.data.tfds_copy" in graph["semrel_jax.data.registry"]  # the walk sees module-level imports
    assert "semrel_jax.data.registry" in graph["semrel_jax.data.prepare"]  # and those inside functions
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and finds cycles
    assert not _cycles(graph)


def test_models_import_nothing_of_the_method_and_errors_nothing_at_all():
    # models/ are generic networks; the method plugs into them (ICA is the decoder's side branch)
    graph = _graph()
    models = [m for m in graph if m.startswith("semrel_jax.models")]
    assert len(models) >= 4
    for module in models:
        assert not {t for t in graph[module] if t.startswith("semrel_jax.method")}, module
    assert graph["semrel_jax.errors"] == set()
    assert not {t for t in graph["semrel_jax.method.ica"] if t.startswith(("semrel_jax.config", "semrel_jax.training"))}


def test_package_files_stay_small():
    for path in ROOT.rglob("*.py"):
        name = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        assert lines <= LONG_FILES.get(name, 420), f"{name}: {lines} lines; split it by concept"


def test_config_keys_are_read_directly_not_with_get_defaults():
    section = re.compile(r"\b(c|config|d|m|e|enc)\.(data|model|train|eval|mesh|llm|projector|ica)\.get\(")
    for path in ROOT.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not section.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
