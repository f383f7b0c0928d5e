"""The jobs/ scripts, imported as modules for tests that call their functions in-process (jobs/ is a folder of
entry scripts, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def job_script(name: str) -> ModuleType:
    """``jobs/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
