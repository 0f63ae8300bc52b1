"""utils.course.submissions: what a notebook's source says about its exercises, without running it."""

from __future__ import annotations

import pytest
from assignment_sources import OWN_LOSS, RENAMED_LOSS

from utils.course.submissions import read_submission


def _read(*sources: str):
    return read_submission(list(enumerate(sources, start=1)))


def test_a_function_written_in_the_notebook_is_own_code() -> None:
    code = _read(OWN_LOSS, "result = clip_loss")
    assert code.exercises["a"].not_own_code == "" and code.hides_code == ""
    assert code.exercises["a"].defined_in == 1


@pytest.mark.parametrize(("sources", "why"), [
    (["from utils.losses import clip_loss"], "imported from utils.losses.clip_loss"),
    (["from utils.losses import clip_loss as theirs", "clip_loss = theirs"], "uses utils.losses"),
    (["import utils.losses as L", "def clip_loss(i, t, s, p):\n    return L.clip_loss(i, t, s, p)"],
     "uses utils.losses"),
    (["from utils.losses import contrastive_loss_from_logits as c",
      "def helper(logits, p):\n    return c(logits, p)",
      "def clip_loss(i, t, s, p):\n    return helper(s * i @ t.T, p)"], "uses utils.losses"),
    (["from utils.course.exercises import reference_masked_compatibility as r",
      "pacl_compatibility = lambda p, t, m: r(p, t, m)"], "uses utils.course.exercises"),
    (["import numpy\nfrom torch.nn.functional import cosine_similarity as pacl_compatibility"],
     "imported from torch.nn.functional"),
])
def test_borrowed_functions_are_found_in_the_source(sources: list[str], why: str) -> None:
    code = _read(*sources)
    key = "c" if "pacl_compatibility" in "".join(sources) else "a"
    assert why in code.exercises[key].not_own_code


def test_a_local_variable_named_like_a_course_import_is_not_that_import() -> None:
    code = _read("from utils.course.grading import summary",
                 "def clip_loss(i, t, s, p):\n    summary = (s * i @ t.T).mean()\n    return summary")
    assert code.exercises["a"].not_own_code == ""


def test_the_last_definition_counts() -> None:
    code = _read("from utils.losses import clip_loss", OWN_LOSS)
    assert code.exercises["a"].not_own_code == "" and code.defining_cells == {2: ["a"]}
    code = _read(OWN_LOSS, "from utils.losses import clip_loss")
    assert code.exercises["a"].not_own_code and code.defining_cells == {2: ["a"]}


@pytest.mark.parametrize(("source", "word"), [
    ("m = __import__('utils.losses')", "__import__"),
    ("import importlib\nm = importlib.import_module('utils.losses')", "importlib.import_module"),
    ("from importlib import import_module", "importlib.import_module"),
    ("import sys\nf = sys.modules['utils.losses'].clip_loss", "sys.modules"),
    ("exec('from utils.losses import clip_loss')", "exec"),
    ("import utils.course.grading as g\ng.save_answers = print", "changes the course's code"),
    ("from utils.course import grading\nsetattr(grading, 'save_answers', print)", "setattr"),
    ("token = _ih[-1]", "_ih"),
    ("import sys\nsys.setprofile(None)", "sys.setprofile"),
])
def test_code_that_hides_what_runs_is_flagged(source: str, word: str) -> None:
    assert word in _read(OWN_LOSS, source).hides_code


@pytest.mark.parametrize("source", [
    'import sys\nif "google.colab" in sys.modules:\n    pass',      # the set-up cell's question
    "import torch\nf = torch.compile",
    "import torch\nnet = torch.nn.Linear(2, 2)\nparts = list(net.modules())",
    "%matplotlib inline\n!pip list",
    "import importlib.util\nfound = importlib.util.find_spec('utils')",
])
def test_ordinary_code_is_not_flagged(source: str) -> None:
    assert _read(OWN_LOSS, source).hides_code == ""


def test_the_fingerprint_ignores_names_comments_docstrings_and_layout() -> None:
    ours, renamed = _read(OWN_LOSS), _read(RENAMED_LOSS)
    assert ours.exercises["a"].fingerprint == renamed.exercises["a"].fingerprint != ""
    changed = _read(RENAMED_LOSS.replace("sum(0).mean()", "sum(0).sum()"))
    assert changed.exercises["a"].fingerprint != ours.exercises["a"].fingerprint


def test_the_fingerprint_follows_helpers_under_other_names() -> None:
    one = _read("def h(x):\n    return x * 2", "def clip_loss(i, t, s, p):\n    return h(i).sum()")
    two = _read("def g(y):\n    return y * 2", "def clip_loss(a, b, c, d):\n    return g(a).sum()")
    three = _read("def g(y):\n    return y * 3", "def clip_loss(a, b, c, d):\n    return g(a).sum()")
    assert one.exercises["a"].fingerprint == two.exercises["a"].fingerprint
    assert three.exercises["a"].fingerprint != one.exercises["a"].fingerprint


def test_a_cell_that_does_not_parse_is_left_out() -> None:
    code = _read("def clip_loss(:\n    pass", OWN_LOSS)
    assert code.exercises["a"].defined_in == 2
