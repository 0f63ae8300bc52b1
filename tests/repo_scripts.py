"""The repository's scripts (``scripts/``, ``bench/``) as modules, for tests that call into them.

They are scripts, not a package: each is loaded from its file, under its file's name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """``load_script("scripts/readme_results.py")`` -> that script as a module (run once)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module      # dataclasses and pickle look a class's module up by name
    spec.loader.exec_module(module)
    return module
