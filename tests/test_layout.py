"""The package's layering holds and the README's layout section names exactly its modules.

- `imdb_jax.data` (reviews become rows) never imports JAX, Flax or Optax, not even inside a
  function, and importing it loads none of them;
- `imdb_jax.models` (rows become logits) never imports `train`, `saved` or `cli`;
- the package's modules import each other without a cycle;
- an import inside a function is there to keep `import imdb_jax` and `--help` fast, and says so:
  a `# Deferred:` comment directly above it (or above the first of its run of imports);
- `import imdb_jax`, and building the command line's parser (`--help`), load none of the heavy
  libraries that only some commands need;
- the README's layout block lists every module of the package, and no other.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "imdb_jax"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_data_never_imports_jax():
    heavy = ("jax", "jaxlib", "flax", "optax")
    for path in sorted((PACKAGE / "data").glob("*.py")):
        offending = {name for name in imported_modules(path) if name.split(".")[0] in heavy}
        assert not offending, f"{path.relative_to(REPO)} imports {sorted(offending)}"
    code = "import sys, imdb_jax.data.imdb, imdb_jax.data.features; print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"


def test_models_never_import_training_saving_or_the_command_line():
    for path in sorted((PACKAGE / "models").glob("*.py")):
        offending = {
            name
            for name in imported_modules(path)
            if name.startswith(("imdb_jax.train", "imdb_jax.saved", "imdb_jax.cli"))
        }
        assert not offending, f"{path.relative_to(REPO)} imports {sorted(offending)}"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(statements: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: none inside a function or under
    `if TYPE_CHECKING:`."""
    found = []
    for statement in statements:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            found.append(statement)
        elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            found += load_time_imports(statement.orelse)
        else:
            for field in ("body", "orelse", "finalbody"):
                found += load_time_imports(getattr(statement, field, []))
            for handler in getattr(statement, "handlers", []):
                found += load_time_imports(handler.body)
    return found


def test_the_package_has_no_import_cycles():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in load_time_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif node.module and not node.level:
                # `from imdb_jax.cli import _checks` imports the module `_checks`, not just the package.
                targets.update(
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in paths else node.module
                    for alias in node.names
                )
        graph[name] = sorted(target for target in targets if target in paths and target != name)

    def cycle_from(start: str, trail: list[str], done: set[str]) -> list[str] | None:
        for target in graph[start]:
            if target in trail:
                return trail[trail.index(target) :] + [target]
            if target not in done:
                found = cycle_from(target, trail + [target], done)
                if found:
                    return found
        done.add(start)
        return None

    done: set[str] = set()
    for name in sorted(graph):
        cycle = cycle_from(name, [name], done)
        assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


DEFERRED = "# Deferred:"


def undeclared_deferred_imports(source: str) -> list[str]:
    """`line: statement` of every import inside a function without a `# Deferred:` comment in the
    comment lines directly above it or above the first import of its run of consecutive imports
    (blank lines between them allowed)."""
    lines = source.splitlines()
    tree = ast.parse(source)
    in_functions = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }

    def declared(node: ast.stmt) -> bool:
        line = node.lineno - 2  # the line above, 0-based
        while line >= 0 and lines[line].lstrip().startswith("#"):
            if lines[line].lstrip().startswith(DEFERRED):
                return True
            line -= 1
        return False

    missing = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            first = None  # the first import of the current run
            for statement in statements:
                if not isinstance(statement, (ast.Import, ast.ImportFrom)):
                    first = None
                    continue
                first = first or statement
                if id(statement) in in_functions and not (declared(first) or declared(statement)):
                    missing.append(f"{statement.lineno}: {ast.unparse(statement)}")
    return missing


def test_every_deferred_import_says_why():
    missing = [
        f"{path.relative_to(REPO)}:{entry}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for entry in undeclared_deferred_imports(path.read_text(encoding="utf-8"))
    ]
    assert not missing, (
        f"imports inside functions without a '{DEFERRED} <why>' comment above them (or above the first of "
        "their run of imports); import at the top of the module unless deferring keeps `import imdb_jax` "
        "or --help fast:\n" + "\n".join(missing)
    )


def test_the_deferred_import_check_finds_an_undeclared_one():
    source = (
        "import os\n\n\ndef declared():\n    # Deferred: why.\n    # More of why.\n    import json\n\n    import shutil\n"
        "    os.sep\n    import csv\n\n\ndef undeclared():\n    # Some other comment.\n    import json\n"
    )
    assert undeclared_deferred_imports(source) == ["11: import csv", "16: import json"]


# Libraries only some commands need: `import imdb_jax` loads none of them, and neither does the
# command line's parser, built whole for `--help` and every option error.
HEAVY = ("jax", "flax", "optax", "scipy", "matplotlib", "tensorflow_datasets", "tqdm", "tensorboardX", "sklearn")


def test_importing_the_package_and_building_the_parser_load_no_heavy_library():
    code = (
        "import sys\n"
        "heavy = lambda names: sorted(name for name in names if name in sys.modules)\n"
        "import imdb_jax\n"
        f"print(heavy({HEAVY!r}))\n"
        "from imdb_jax.cli import build_parser\n"
        "build_parser()\n"
        f"print(heavy({HEAVY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[]"], result.stdout


def package_modules() -> set[str]:
    return {
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "__pycache__" not in path.parts
    }


def readme_layout() -> set[str]:
    """The module paths in the README's layout block (a tree: folders end with '/', modules with '.py')."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## How the package is laid out\n.*?```text\n(.*?)```", text, re.S)
    assert block, "README.md has no layout block"
    paths, stack = set(), []
    for line in block.group(1).splitlines():
        match = re.match(r"( *)(\S+)", line)
        if not match:
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        stack = stack[:depth]
        if name.endswith("/"):
            stack.append(name)
        elif name.endswith(".py"):
            paths.add("".join(stack) + name)
    return paths


def test_the_readme_layout_names_exactly_the_packages_modules():
    listed, actual = readme_layout(), package_modules()
    assert not actual - listed, f"modules missing from README's layout: {sorted(actual - listed)}"
    assert not listed - actual, f"README's layout names modules that do not exist: {sorted(listed - actual)}"
