"""zsagent.virt's module graph: every module imports on its own, no import hides inside a function to
dodge a cycle, and the undo dispatcher covers every journal step kind."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import zsagent.virt
from zsagent.virt import journal, undo

VIRT_DIR = Path(zsagent.virt.__file__).parent
MODULES = sorted(f"zsagent.virt.{m.name}" for m in pkgutil.iter_modules([str(VIRT_DIR)]))


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_function_level_imports_of_zsagent_modules():
    late = []
    for path in sorted(VIRT_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                late += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "zsagent"]
    assert late == []


def test_every_step_kind_has_an_undo():
    assert set(undo.UNDO) == set(journal.KINDS)


def test_unknown_step_kind_is_refused():
    with pytest.raises(ValueError, match="unknown undo step kind"):
        undo.undo_step("virt-nothing", {})
