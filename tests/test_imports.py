"""Every module imports from a clean working directory, through the one `onetower` name.

This is the one place a fresh interpreter is worth its start-up cost: in-process, pytest's
own cwd would be on sys.path and hide a bare `import data` / `from objectives import ...`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.util, pkgutil, sys
    names = []
    # walk each package itself: an editable install maps the three folders, a wheel nests them
    for pkg in ("onetower", "onetower.unimodal", "onetower.objectives", "onetower.data"):
        mod = importlib.import_module(pkg)
        names += [pkg] + [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    for name in sorted(set(names)):
        importlib.import_module(name)
    for sub in ("unimodal", "objectives", "data"):
        assert importlib.util.find_spec(sub) is None, f"bare top-level {sub!r} is importable"
    print(len(names))
    """
)


def test_every_module_imports_from_a_temp_cwd(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # keeps CI's PYTHONPATH to the installed wheel
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) >= 10
