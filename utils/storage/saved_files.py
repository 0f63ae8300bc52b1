"""Reading what the course saved (weights, their JSON configs, optimiser state), guarded.

A saved file can be cut short by a full disk, replaced by another model's, or edited by hand.
The libraries underneath then fail with messages that name neither the file nor a way out
(safetensors' "incomplete metadata", torch's "size mismatch for ...", a TypeError from a
constructor). Every loader of the package (:func:`utils.models.load_clip`,
:func:`utils.train.load_checkpoint` behind ``fit(resume=True)``, :func:`utils.storage.pacl_io.load_pacl`)
reads through these functions instead, which turn any such failure into a :class:`SavedFileError`
(a missing file into a ``FileNotFoundError``) naming the file, saying what is wrong and ending with
the caller's ``remedy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_model
from torch import nn

T = TypeVar("T")


class SavedFileError(ValueError):
    """A saved file is missing, damaged, or does not fit what reads it; the message says which."""


def read_json_object(path: str | Path, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`SavedFileError` ending in ``remedy`` otherwise."""
    path = Path(path)
    _require(path, remedy)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SavedFileError(f"{path} cannot be read as JSON ({error}). {remedy}") from error
    if not isinstance(value, dict):
        raise SavedFileError(f"{path}: expected a JSON object, got {type(value).__name__}. "
                             f"{remedy}")
    return value


def build_from_config(path: str | Path, fields: dict[str, Any], build: Callable[..., T],
                      remedy: str) -> T:
    """``build(**fields)``, ``fields`` read from ``path``: an unknown, missing or ill-typed field
    becomes a :class:`SavedFileError` naming the file."""
    try:
        return build(**fields)
    except (TypeError, ValueError, KeyError) as error:
        raise SavedFileError(f"{path} is not a config this code can build from ({error}). "
                             f"{remedy}") from error


def load_weights(module: nn.Module, path: str | Path, remedy: str,
                 device: str | torch.device = "cpu") -> None:
    """Load a ``.safetensors`` file into ``module`` (every tensor, every shape must match)."""
    path = Path(path)
    _require(path, remedy)
    try:
        load_model(module, str(path), device=str(device))
    except Exception as error:  # safetensors and torch raise several kinds for these cases
        raise SavedFileError(
            f"{path}: the weights cannot be read or do not fit this {type(module).__name__} "
            f"({_first_line(error)}). {remedy}") from error


def load_tensor_state(path: str | Path, remedy: str) -> dict[str, Any]:
    """A dict saved with ``torch.save`` holding only tensors and plain values, read on the CPU."""
    path = Path(path)
    _require(path, remedy)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # pickle, zip and torch errors for cut or foreign files
        raise SavedFileError(f"{path} cannot be read ({_first_line(error)}). {remedy}") from error
    if not isinstance(state, dict):
        raise SavedFileError(f"{path}: expected a dict, got {type(state).__name__}. {remedy}")
    return state


def _require(path: Path, remedy: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder is incomplete. {remedy}")


def _first_line(error: BaseException) -> str:
    """An exception's message cut to its first statement: torch lists every mismatched tensor,
    after a heading line ending in a colon that says nothing by itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
