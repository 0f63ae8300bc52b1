"""Reading a submitted assignment notebook's code without running it (for the instructors' grader).

What the kernel reports about a function can be forged by the notebook itself; what the source
says cannot. So the grader reads the source (Python's ``ast``) for three things:

- **which cell defines which exercise**, so that it can save each exercise's answers right after
  that cell runs: what a notebook answered before a cell hangs still counts;
- **whether an exercise is the student's own code**: its function must be defined in the notebook
  (``def``, or a ``lambda``), and neither it nor the notebook's functions it calls may use a name
  imported from the course's package ``utils``. A notebook that imports code by name at run time
  (``__import__``, ``importlib``, ``exec``, ...), or assigns into the course's modules, scores 0
  on every exercise: the source would no longer say what runs;
- **a fingerprint of each exercise's code** with names, comments, docstrings and layout
  normalised away, so that submissions with the same code (or the reference's) are flagged.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from utils.course.exercises import EXERCISES, EXPERIMENT_NAMES

COURSE_PACKAGE = "utils"

# What runs or imports code the source does not show, or switches off the kernel's own check.
HIDING_NAMES = {"__import__", "exec", "eval", "compile", "get_ipython", "globals", "locals",
                "vars", "setattr", "delattr", "__builtins__",
                "In", "Out", "_ih", "_oh", "_i", "_ii", "_iii"}   # IPython's history of cells
HIDING_ATTRIBUTES = {"importlib": {"import_module", "reload", "__import__"},
                     "sys": {"modules", "setprofile", "settrace", "meta_path", "path_hooks"},
                     "builtins": None}          # None: every attribute

EXERCISE_NAMES = {key: (exercise.function_name,) for key, exercise in EXERCISES.items()}
EXERCISE_NAMES["e"] = EXPERIMENT_NAMES


@dataclass
class ExerciseCode:
    """What the source says about one exercise."""

    defined_in: int | None = None     # the (1-based) cell that binds its name last
    not_own_code: str = ""            # why it scores 0, or "" (the kernel's checks still apply)
    fingerprint: str = ""             # equal for code that differs only in names and layout


@dataclass
class SubmissionCode:
    """What the source says about a whole notebook."""

    exercises: dict[str, ExerciseCode]
    defining_cells: dict[int, list[str]] = field(default_factory=dict)  # cell -> keys it defines last
    hides_code: str = ""              # a reason every exercise scores 0, or ""


_MAGIC = re.compile(r"^(\s*)[%!?].*$", re.MULTILINE)


def _parse(source: str) -> ast.Module | None:
    """A cell's syntax tree; IPython's ``%magic`` and ``!shell`` lines read as ``pass``."""
    try:
        return ast.parse(_MAGIC.sub(r"\1pass", source))
    except SyntaxError:
        return None


def _top_level(tree: ast.Module) -> Iterable[ast.stmt]:
    """The statements that run at module level, inside top-level ``if``/``try``/``with`` too."""
    for node in tree.body:
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for block in ("body", "orelse", "finalbody"):
                for child in getattr(node, block, []):
                    yield from _top_level(ast.Module(body=[child], type_ignores=[]))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(ast.Module(body=handler.body, type_ignores=[]))


@dataclass
class _Binding:
    cell: int
    node: ast.AST                      # a FunctionDef, an assigned value, or an import
    module: str = ""                   # for an import: the module it comes from


def _bindings(cells: list[tuple[int, ast.Module]]) -> dict[str, list[_Binding]]:
    """Every top-level name and what bound it, in the order the cells run."""
    bound: dict[str, list[_Binding]] = {}
    for number, tree in cells:
        for node in _top_level(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.setdefault(node.name, []).append(_Binding(number, node))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    module = alias.name if alias.asname else alias.name.split(".")[0]
                    bound.setdefault(name, []).append(_Binding(number, node, module))
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    bound.setdefault(alias.asname or alias.name, []).append(
                        _Binding(number, node, f"{node.module or ''}.{alias.name}"))
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            bound.setdefault(name.id, []).append(
                                _Binding(number, node.value or node))
    return bound


def _is_course(module: str) -> bool:
    return module == COURSE_PACKAGE or module.startswith(COURSE_PACKAGE + ".")


def _free_names(node: ast.AST) -> list[str]:
    """The names ``node``'s code reads from outside itself, in the order of :func:`ast.walk`
    (the same for the same code under other names). A function's own arguments and local
    variables are not free: a local named like one of the notebook's imports is not that import."""
    local = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, ast.Store)}
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id not in local]
    return list(dict.fromkeys(names))


def _reached(name: str, bound: dict[str, list[_Binding]]) -> list[_Binding]:
    """The last binding of ``name`` and of every notebook name its code reads, transitively."""
    seen, order, todo = set(), [], [name]
    while todo:
        current = todo.pop(0)
        if current in seen or current not in bound:
            continue
        seen.add(current)
        binding = bound[current][-1]
        order.append(binding)
        if not binding.module:
            todo.extend(n for n in _free_names(binding.node) if n not in seen)
    return order


def _own_code_problem(name: str, bound: dict[str, list[_Binding]]) -> str:
    """Why the function bound to ``name`` is not the student's own code ("" when it is)."""
    if name not in bound:
        return ""                                    # never defined: the kernel reports it missing
    last = bound[name][-1]
    if last.module:
        return (f"`{name}` is imported from {last.module.lstrip('.')} (cell {last.cell}), not "
                "written in your notebook.")
    for binding in _reached(name, bound):
        if binding.module and _is_course(binding.module):
            return (f"`{name}` uses {binding.module} (imported in cell {binding.cell}), the "
                    "course's own code: the exercise asks for your own code, with torch.")
    return ""


def _hidden_by(node: ast.AST) -> str:
    """The name by which ``node`` runs or changes code unseen (``"exec"``, ``"sys.modules"``),
    or ""."""
    if isinstance(node, ast.Name) and node.id in HIDING_NAMES:
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        attributes = HIDING_ATTRIBUTES.get(node.value.id, ())
        if attributes is None or node.attr in attributes:
            return f"{node.value.id}.{node.attr}"
    if isinstance(node, ast.ImportFrom) and node.module in HIDING_ATTRIBUTES:
        attributes = HIDING_ATTRIBUTES[node.module]
        for alias in node.names:
            if attributes is None or alias.name in attributes or alias.name == "*":
                return f"{node.module}.{alias.name}"
    return ""


def _hiding(cells: list[tuple[int, ast.Module]], bound: dict[str, list[_Binding]]) -> str:
    """A reason the source cannot be trusted to say what runs, or ""."""
    course_names = {name for name, bindings in bound.items()
                    if any(b.module and _is_course(b.module) for b in bindings)}
    for number, tree in cells:
        # `"google.colab" in sys.modules` only asks a question (the set-up cell does)
        asked = {id(side) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                 and all(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
                 for side in node.comparators}
        for node in ast.walk(tree):
            if id(node) not in asked and (hidden := _hidden_by(node)):
                return (f"cell {number} uses `{hidden}`, which runs or changes code that the "
                        "notebook's source does not show; the assignment needs none of it.")
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in course_names:
                    return (f"cell {number} changes the course's code "
                            f"(`{ast.unparse(node)}`); the assignment needs none of it.")
            if isinstance(node, ast.ImportFrom) and node.module and _is_course(node.module) and (
                    any(alias.name == "*" for alias in node.names)):
                return (f"cell {number} imports * from {node.module}: import what you use by "
                        "name.")
    return ""


# --------------------------------------------------------------------------------------------
# Fingerprints: the same code under other names, comments and layout
# --------------------------------------------------------------------------------------------

class _Renamer(ast.NodeTransformer):
    """Renames the notebook's own functions (f0, f1, ...) and every local name (v0, v1, ...) in
    the order they first appear; names from outside (torch, F, math) stay."""

    def __init__(self, functions: list[str]) -> None:
        self.functions = {name: f"f{i}" for i, name in enumerate(functions)}
        self.locals: dict[str, str] = {}
        self.local_names: set[str] = set()

    def _new(self, name: str) -> str:
        if name in self.functions:
            return self.functions[name]
        if name in self.local_names:
            return self.locals.setdefault(name, f"v{len(self.locals)}")
        return name

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]           # the docstring is prose, not code
        self.local_names |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        self.local_names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                             and isinstance(n.ctx, ast.Store)}
        node.name = self._new(node.name)
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg, node.annotation = self._new(node.arg), None
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._new(node.id)
        return node


def fingerprint(nodes: list[ast.AST], functions: list[str]) -> str:
    """A short hash of ``nodes`` with names, docstrings, comments and layout normalised."""
    renamer = _Renamer(functions)
    text = "\n".join(ast.unparse(renamer.visit(copy.deepcopy(node))) for node in nodes)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprint_of(names: tuple[str, ...], bound: dict[str, list[_Binding]]) -> str:
    reached = [b for name in names for b in _reached(name, bound) if not b.module]
    if not reached:
        return ""
    functions = [b.node.name for b in reached if isinstance(b.node, ast.FunctionDef)]
    return fingerprint([b.node for b in reached], functions)


# --------------------------------------------------------------------------------------------
# The whole notebook
# --------------------------------------------------------------------------------------------

def read_submission(cell_sources: list[tuple[int, str]]) -> SubmissionCode:
    """Read a notebook's code cells, ``(1-based cell number, source)`` in the order they run.
    A cell that does not parse is left out (running it raises, and the grader reports that)."""
    cells = [(number, tree) for number, source in cell_sources
             if (tree := _parse(source)) is not None]
    bound = _bindings(cells)
    code = SubmissionCode(exercises={}, hides_code=_hiding(cells, bound))
    for key, names in EXERCISE_NAMES.items():
        defined = [b.cell for name in names for b in bound.get(name, [])]
        code.exercises[key] = ExerciseCode(
            defined_in=max(defined) if defined else None,
            not_own_code="" if key == "e" else _own_code_problem(names[0], bound),
            fingerprint=_fingerprint_of(names[:1], bound))
        if defined:   # answers are saved after the cell that defines it last (and at the end)
            code.defining_cells.setdefault(max(defined), []).append(key)
    return code
