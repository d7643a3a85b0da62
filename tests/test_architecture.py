"""The module picture of docs/ARCHITECTURE.md, pinned: the transport layer (``transport.py``,
``ssh/``) imports nothing above it and knows no SLURM command by name; nothing imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hpcpipe"
TRANSPORT_LAYER = [PKG / "transport.py", *sorted((PKG / "ssh").glob("*.py"))]
#: what a transport may use: errors, atomic files, the configuration and settings, itself
TRANSPORT_MAY_IMPORT = {"hpcpipe.errors", "hpcpipe.files", "hpcpipe.config", "hpcpipe.settings", "hpcpipe.transport",
                        "hpcpipe.ssh"}
SLURM_COMMANDS = {"sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "sstat", "sacctmgr", "srun"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every hpcpipe module ``path`` imports, at module level or inside functions."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            found |= {mod} if node.module or not node.level else {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] == "hpcpipe"}


def _code_strings(path: Path) -> set[str]:
    """Words of the string constants and names a module's code uses (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words |= set(node.value.replace("/", " ").split())
        elif isinstance(node, ast.Name):
            words.add(node.id)
    return words


def test_the_transport_layer_imports_nothing_above_it():
    for path in TRANSPORT_LAYER:
        above = {m for m in _imports(path) if not any(m == ok or m.startswith(ok + ".") for ok in TRANSPORT_MAY_IMPORT)}
        assert not above, f"{path.relative_to(PKG.parent)} imports {sorted(above)}"


def test_the_transport_layer_knows_no_slurm_command():
    for path in TRANSPORT_LAYER:
        named = _code_strings(path) & SLURM_COMMANDS
        assert not named, f"{path.relative_to(PKG.parent)} names {sorted(named)}"


def test_nothing_imports_the_cli():
    users = [p for p in PKG.rglob("*.py") if p.name != "cli.py" and "hpcpipe.cli" in _imports(p)]
    assert not users, [str(p.relative_to(PKG.parent)) for p in users]
