"""The package's layering holds and the README's layout section names exactly its modules.

- `imdb_jax.data` (reviews become rows) never imports JAX, Flax or Optax, not even inside a
  function, and importing it loads none of them;
- `imdb_jax.models` (rows become logits) never imports `train`, `saved` or `cli`;
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
