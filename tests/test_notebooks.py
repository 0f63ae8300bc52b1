"""The numbered notebooks: committed clean, and runnable top to bottom in FAST mode.

Every ``notebooks/NN_*.ipynb`` is picked up automatically. The smoke runs execute each notebook
with nbclient (kernel ``python3``, i.e. this interpreter), in ``notebooks/`` as Jupyter would, with
``CLIP_PACL_FAST=1``, no network for Hugging Face, the Agg backend, and data and outputs in a
temporary folder. That folder is shared by all notebooks of one session, in numeric order, because
later notebooks start from what earlier ones saved (02 loads 01's CLIP). Each run's wall time is
reported on the terminal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from repo_scripts import load_script

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300
# A FAST run far beyond its target (well under 3 minutes) means FAST mode is broken.
NOTEBOOK_BUDGET_S = float(os.environ.get("CLIP_PACL_NOTEBOOK_BUDGET_S", "300"))
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_URL = "https://colab.research.google.com/github/"
sync = load_script("scripts/sync_notebooks.py")


def _ids(path: Path) -> str:
    return path.name


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no numbered notebooks found in {NOTEBOOK_DIR}"


# --------------------------------------------------------------------------------------------
# Static checks: what is committed
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_ipynb_is_what_its_source_makes(path: Path) -> None:
    """Edited the ``.py`` and not rewritten the ``.ipynb``, or the other way round: either fails."""
    source = path.with_suffix(".py")
    assert source.is_file(), f"{path.name} has no source {source.name}"
    expected = nbformat.writes(sync.notebook_for(source))
    assert nbformat.writes(_read(path)) == expected, (
        f"{path.name} and {source.name} disagree: after editing {source.name}, run "
        "`.venv/bin/python scripts/sync_notebooks.py`; after editing the .ipynb, "
        f"`.venv/bin/python scripts/sync_notebooks.py --from-ipynb {path.name[:2]}`")


def test_every_notebook_starts_with_the_one_set_up_cell() -> None:
    setup = sync.setup_source()
    for path in NOTEBOOKS:
        code = [cell for cell in _read(path).cells if cell.cell_type == "code"]
        assert code[0].source == setup, f"{path.name}: its first code cell is not setup_cell.py"


def test_from_ipynb_writes_a_source_that_makes_the_same_notebook(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The way back, for who edits a notebook in Jupyter: .ipynb -> .py -> the same .ipynb."""
    for path in [*NOTEBOOKS, *sync.sources(), sync.SETUP_SOURCE]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    source = tmp_path / "02_pacl_patch_alignment.py"
    monkeypatch.setattr(sync, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(sync, "SETUP_SOURCE", tmp_path / "setup_cell.py")
    monkeypatch.setattr(sync, "ASSIGNMENT_SOURCE", tmp_path / "04_assignment.py")
    edited = _read(source.with_suffix(".ipynb"))
    edited.cells[0].source += "\n\nA sentence added in Jupyter."
    nbformat.write(edited, source.with_suffix(".ipynb"))
    assert sync.source_from_ipynb("02") == source
    assert "# A sentence added in Jupyter." in source.read_text()
    assert nbformat.writes(sync.notebook_for(source)) == nbformat.writes(edited)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_without_outputs(path: Path) -> None:
    dirty = [i for i, cell in enumerate(_read(path).cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; clear "
                       "them before committing (e.g. `jupyter nbconvert --clear-output --inplace`)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_has_colab_badge_for_itself(path: Path) -> None:
    markdown = "\n".join(c.source for c in _read(path).cells if c.cell_type == "markdown")
    assert COLAB_BADGE in markdown, f"{path.name}: no Open-in-Colab badge"
    links = [part.split(")")[0] for part in markdown.split(f"({COLAB_URL}")[1:]]
    assert any(link.endswith(f"/notebooks/{path.name}") for link in links), (
        f"{path.name}: the Colab badge does not link to notebooks/{path.name}: {links}")


def _is_parameters_cell(cell: nbformat.NotebookNode) -> bool:
    # The papermill convention (a "parameters" tag), or a first line "# Parameters ...".
    first_line = cell.source.lstrip().split("\n", 1)[0].lower()
    return cell.cell_type == "code" and ("parameters" in cell.metadata.get("tags", [])
                                         or first_line.startswith("# parameters"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_has_one_parameters_cell_reading_fast_mode(path: Path) -> None:
    cells = [c for c in _read(path).cells if _is_parameters_cell(c)]
    assert len(cells) == 1, (f"{path.name}: expected one parameters cell (tagged 'parameters', or "
                             f"starting with '# Parameters'), found {len(cells)}")
    assert "fast_mode()" in cells[0].source or "CLIP_PACL_FAST" in cells[0].source, (
        f"{path.name}: the parameters cell should switch FAST mode on from CLIP_PACL_FAST "
        "(utils.course.notebook.fast_mode())")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_shell_commands_only_inside_colab_guard(path: Path) -> None:
    # nbclient runs the notebook with plain IPython: `!cmd` or `%pip` outside a Colab-only
    # branch would also run (and install things) locally.
    for cell in _read(path).cells:
        if cell.cell_type != "code":
            continue
        magic = [line for line in cell.source.splitlines() if line.lstrip().startswith(("!", "%"))]
        assert not magic or "google.colab" in cell.source, (
            f"{path.name}: shell/magic lines outside a Colab guard: {magic}")


# --------------------------------------------------------------------------------------------
# Executed copies: the full offline runs, committed so that results can be read without running
# --------------------------------------------------------------------------------------------

EXECUTED_DIR = NOTEBOOK_DIR / "executed"
TEACHING = [path for path in NOTEBOOKS if not path.name.startswith("04_")]


def _code(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("path", TEACHING, ids=_ids)
def test_executed_copy_ran_todays_code_to_the_end(path: Path) -> None:
    executed_path = EXECUTED_DIR / path.name
    rerun = ("run `.venv/bin/python scripts/run_notebooks.py --only 01 02 03 --out "
             "notebooks/executed` and commit the copies")
    assert executed_path.is_file(), f"no executed copy of {path.name}: {rerun}"
    executed = _read(executed_path)
    assert _code(executed) == _code(_read(path)), (
        f"notebooks/executed/{path.name} ran other code than {path.name} holds now: {rerun}")
    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), (
        f"notebooks/executed/{path.name} did not run every cell")
    errors = [cell.source[:60] for cell in code_cells
              if any(output.output_type == "error" for output in cell.outputs)]
    assert not errors, f"notebooks/executed/{path.name}: cells ended in an error: {errors}"
    printed = "".join(output.get("text", "") for cell in code_cells for output in cell.outputs)
    assert "fast=False" in printed, f"notebooks/executed/{path.name} is not a full run"
    figures = sum("image/png" in output.get("data", {}) for cell in code_cells
                  for output in cell.outputs)
    assert figures >= 3, f"notebooks/executed/{path.name} shows {figures} figures"


# --------------------------------------------------------------------------------------------
# Smoke runs
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data/outputs folder for all notebooks of the session (02 needs what 01 saved)."""
    return tmp_path_factory.mktemp("notebook_runs")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_in_fast_mode(path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str],
                                    request: pytest.FixtureRequest) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel is a child process: it inherits this environment.
    for name, value in {"CLIP_PACL_FAST": "1", "CLIP_PACL_DATA": str(workspace / "data"),
                        "CLIP_PACL_OUTPUTS": str(workspace / "outputs"), "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
                        "NO_ALBUMENTATIONS_UPDATE": "1"}.items():
        monkeypatch.setenv(name, value)
    notebook = _read(path)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        # Keep the executed notebook so the failing cell can be inspected with its outputs.
        failed = workspace / f"failed_{path.name}"
        nbformat.write(notebook, failed)
        pytest.fail(f"{path.name} failed (executed copy: {failed}):\n{error}", pytrace=False)
    seconds = time.perf_counter() - started

    with capsys.disabled():  # shown even when the test passes and output is captured
        print(f"\n[notebook wall time] {path.name}: {seconds:.1f} s in FAST mode")
    request.node.user_properties.append(("wall_seconds", round(seconds, 1)))
    assert seconds < NOTEBOOK_BUDGET_S, (
        f"{path.name} took {seconds:.0f} s in FAST mode; the budget is {NOTEBOOK_BUDGET_S:.0f} s")


# --------------------------------------------------------------------------------------------
# utils.course.notebook
# --------------------------------------------------------------------------------------------

def test_fast_mode_and_folders_follow_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    from utils.course import notebook

    monkeypatch.delenv("CLIP_PACL_FAST", raising=False)
    assert not notebook.fast_mode()
    monkeypatch.setenv("CLIP_PACL_FAST", "1")
    assert notebook.fast_mode()
    monkeypatch.setenv("CLIP_PACL_FAST", "0")
    assert not notebook.fast_mode()

    monkeypatch.delenv("CLIP_PACL_DATA", raising=False)
    assert notebook.data_dir() == REPO / "data"
    monkeypatch.setenv("CLIP_PACL_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CLIP_PACL_OUTPUTS", str(tmp_path / "o"))
    assert notebook.data_dir() == tmp_path / "d"
    assert notebook.outputs_dir("01_clip") == tmp_path / "o" / "01_clip"
    assert (tmp_path / "o" / "01_clip").is_dir()
    assert notebook.repo_root() == REPO


def test_format_table_aligns_columns() -> None:
    from utils.course.notebook import format_table

    lines = format_table(["name", "value"], [("a", 0.5), ("longer", 12)]).splitlines()
    assert lines == ["name    value", "------  -----", "a       0.500", "longer     12"]


def test_run_notebooks_script_keeps_the_executed_copy_and_its_text(tmp_path: Path) -> None:
    """scripts/run_notebooks.py, which produces the numbers quoted in the notebooks, on the
    quickest notebook in FAST mode."""
    import subprocess
    import sys

    env = {**os.environ, "CLIP_PACL_DATA": str(tmp_path / "data"),
           "CLIP_PACL_OUTPUTS": str(tmp_path / "outputs")}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "run_notebooks.py"), "--fast",
                           "--only", "04", "--out", str(tmp_path / "executed")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    executed = tmp_path / "executed" / "04_assignment.ipynb"
    assert "04_assignment.ipynb" in done.stdout and "FAST mode" in done.stdout
    assert any(cell.get("outputs") for cell in _read(executed).cells)
    assert "--- cell" in (tmp_path / "executed" / "04_assignment.txt").read_text()
