"""Nothing in the package runs a shell or builds a command line as a string: every subprocess gets an
argv list, so nothing a request carries can reach a shell (house rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import zsagent

PACKAGE = Path(zsagent.__file__).parent
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("asyncio", "create_subprocess_shell"), ("pty", "spawn"),
               ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"), ("commands", "getoutput")}
ARGV_CALLS = {("subprocess", name) for name in ("run", "call", "check_call", "check_output", "Popen")} | {
    ("asyncio", "create_subprocess_exec")} | {("os", name) for name in (
        "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnvp")}


def _dotted(node: ast.AST) -> tuple[str, str] | None:
    """``module.function`` of a call such as ``subprocess.run(...)``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    return None


def _is_string_built(node: ast.AST) -> bool:
    """A command given as one string: a literal, an f-string, a concatenation or a ``.format``/``.join``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and (_is_string_built(node.left) or _is_string_built(node.right)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return isinstance(node.func.value, ast.Constant | ast.JoinedStr)
    return False


def findings(source: str, name: str) -> list[str]:
    found = []
    imported: dict[str, tuple[str, str]] = {}  # from subprocess import run -> run: ("subprocess", "run")
    tree = ast.parse(source, name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{name}:{node.lineno}"
        call = _dotted(node.func)
        if call is None and isinstance(node.func, ast.Name):
            call = imported.get(node.func.id)
        for keyword in node.keywords:
            off = isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            if keyword.arg == "shell" and not off:
                found.append(f"{where}: shell={ast.unparse(keyword.value)}")
        if call in SHELL_CALLS:
            found.append(f"{where}: {'.'.join(call)}() runs a shell")
        if call in ARGV_CALLS:
            command = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "args"), None)
            if command is not None and _is_string_built(command):
                found.append(f"{where}: {'.'.join(call)}() gets a command string, not an argv list")
    return found


def test_the_package_never_runs_a_shell_nor_builds_a_command_string():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 50  # the whole package is read, not an empty glob
    problems = [f for path in sources for f in findings(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert problems == []


def test_the_scan_sees_each_kind_of_shell_use():
    bad = """
import os, subprocess
from subprocess import run as go
subprocess.run("rbd export " + name, shell=True)
subprocess.Popen(f"qemu-img info {path}")
go("ls -l")
os.system("rm -rf /")
os.popen("id")
subprocess.check_output(" ".join(argv))
"""
    found = findings(bad, "bad.py")
    assert [f.split(":", 2)[1] for f in found] == ["4", "4", "5", "6", "7", "8", "9"], found
    fine = "import subprocess\nsubprocess.run(['rbd', 'export', name, '-'], check=True, shell=False)\n"
    assert findings(fine, "fine.py") == []
