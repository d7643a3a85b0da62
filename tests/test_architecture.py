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


#: the modules that read the configuration: the reader itself and the one place that calls it
CONFIG_READERS = {PKG / "config.py", PKG / "settings.py"}
#: environment variables a module may read that its own job script sets, deliberately (not
#: settings): ``$HPCPIPE_BINDS`` ends with the scratch folder only the node's shell knows
SCRIPT_SET = {(PKG / "engines" / "pack.py", "HPCPIPE_BINDS")}


def _hpcpipe_name(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) \
        and node.value.startswith("HPCPIPE_") else None


def _config_reads(tree: ast.AST) -> list[str]:
    """``config.get(...)``/``config.load()`` calls and reads of ``HPCPIPE_*`` variables
    (``os.environ[...]``, ``.get``/``getenv``/``pop`` of one, ``"HPCPIPE_..." in os.environ``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "config" and node.func.attr in ("get", "load"):
                found.append(f"config.{node.func.attr}() at line {node.lineno}")
            elif node.func.attr in ("get", "getenv", "pop") and node.args and _hpcpipe_name(node.args[0]):
                found.append(f"{_hpcpipe_name(node.args[0])} at line {node.lineno}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("config") \
                and {a.name for a in node.names} & {"get", "load"}:
            found.append(f"from config import get/load at line {node.lineno}")
        elif isinstance(node, ast.Subscript) and _hpcpipe_name(node.slice) and isinstance(node.ctx, ast.Load):
            found.append(f"{_hpcpipe_name(node.slice)} at line {node.lineno}")
        elif isinstance(node, ast.Compare) and _hpcpipe_name(node.left) \
                and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            found.append(f"{_hpcpipe_name(node.left)} at line {node.lineno}")
    return found


def test_the_rule_catches_what_it_forbids():
    code = ('config.get("a", "b")\nconfig.load()\nos.environ["HPCPIPE_X"]\nos.environ.get("HPCPIPE_X")\n'
            'os.getenv("HPCPIPE_X")\n"HPCPIPE_X" in os.environ\nfrom .config import get\n')
    assert len(_config_reads(ast.parse(code))) == 7
    assert not _config_reads(ast.parse('env = {"HPCPIPE_RUN_ID": run_id}\nos.environ.get("SLURM_JOB_ID")\n'))


def test_configuration_is_read_only_by_settings():
    """``Settings.load()`` is the one reader of the configuration (docs/CONFIG.md): no module
    calls ``config.get``/``config.load`` or reads an ``HPCPIPE_*`` variable, so a job's settings
    can only come from its ``run.json``."""
    bad = {}
    for path in sorted(PKG.rglob("*.py")):
        if path in CONFIG_READERS:
            continue
        reads = [r for r in _config_reads(ast.parse(path.read_text()))
                 if not any(path == p and r.startswith(name + " ") for p, name in SCRIPT_SET)]
        if reads:
            bad[str(path.relative_to(PKG.parent))] = reads
    assert not bad, bad
