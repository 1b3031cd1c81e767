"""The package layering of pyproject.toml's [tool.importlinter] contracts, checked by import-linter on every test
run: imports point down only (demos > export > runtime > kernels | training > common), and the runtime, the kernels
and the shared helpers stay free of what lies above them (torch included, in function-level imports too)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.is_file():
        return str(exe)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("import-linter is not installed (it is a dev dependency: pip install -e '.[dev]')")
    return found


def test_import_contracts_are_kept():
    r = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "broken" not in r.stdout.split("Contracts:")[-1].replace("0 broken", ""), \
        r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in r.stdout, r.stdout[-2000:]


def test_a_violation_is_caught(tmp_path):
    """The contracts can fail: a copy of the tree whose runtime imports torch breaks the torch-free contract."""
    for pkg in ("common", "kernels", "training", "runtime", "export", "demos"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.md"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "runtime" / "sneaky.py").write_text("def f():\n    import torch\n    return torch\n")
    # -S: no site processing, so the editable install's import hook cannot point at the real tree; the copy comes
    # first on the path, the venv's site-packages (import-linter, torch) after it
    import site
    import sysconfig

    path = [str(tmp_path), sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    code = "import sys; sys.argv = ['lint-imports', '--no-cache']; from importlinter.cli import lint_imports_command; " \
           "lint_imports_command()"
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "runtime.sneaky -> torch" in r.stdout, r.stdout[-3000:] + r.stderr[-1000:]
    assert "The runtime is torch-free (and never reaches up into training or export) BROKEN" in r.stdout
