"""Stand-ins for what only a Colab runtime has, for the tests that force the Colab branch.

``google.colab`` (the set-up cell and ``IN_COLAB`` only ask whether it is loaded), and ``pip``: a
package that shadows the real one on ``PYTHONPATH`` and writes each ``python -m pip`` call's
arguments, one JSON list a line, to ``$PIP_CALLS`` instead of installing anything.
"""

from __future__ import annotations

from pathlib import Path

STAND_INS = {
    "google/__init__.py": "",
    "google/colab/__init__.py": '"""Stands in for Colab\'s module in tests."""\n',
    "pip/__init__.py": "",
    "pip/__main__.py": ("import json, os, sys\n"
                        "with open(os.environ['PIP_CALLS'], 'a') as log:\n"
                        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"),
}


def write_stand_ins(folder: Path) -> Path:
    """Write the stand-in packages into ``folder`` (put it first on ``PYTHONPATH``); return it."""
    for relative, text in STAND_INS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return folder
