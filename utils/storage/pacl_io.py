"""Saving and loading a trained PACL embedder (notebook 02 -> notebook 03).

A saved PACL is one folder::

    pacl_config.json     how to rebuild the module (embed_dim, hidden_dim, text_embedder, ...)
    model.safetensors    its weights (vision embedder, optional text embedder, logit scale)
    meta.json            what the caller wants to keep with it: which frozen backbone it was
                         trained on, image size, patch grid, prompt templates, metrics, ...

The embedder only makes sense on top of the frozen CLIP it was trained with. Put that CLIP's
``FrozenBackbone.cache_key`` into ``meta["backbone_key"]`` and :func:`load_pacl` can check, when
given the backbone, that it is the same model (same weights, tokenizer and normalisation).

The folder is assembled under a temporary name and renamed into place (as
:func:`utils.models.save_clip` does): a reader never sees a half-written PACL, and a failed save
leaves the previous one untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from utils.pacl import PACL
from utils.storage.atomic import atomic_folder
from utils.storage.saved_files import build_from_config, load_weights, read_json_object

FORMAT_VERSION = 1
CONFIG_FILE = "pacl_config.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
BACKBONE_KEY = "backbone_key"
RETRAIN = "Train and save the PACL again with notebook 02."


def pacl_config(pacl: PACL) -> dict[str, Any]:
    """The constructor arguments that rebuild ``pacl``'s architecture (weights aside)."""
    embedder = pacl.vision_embedder
    return {
        "format_version": FORMAT_VERSION,
        "embed_dim": embedder.linear.in_features,
        "hidden_dim": embedder.residual[0].out_features,
        "text_embedder": pacl.text_embedder is not None,
        "softmax_temperature": pacl.softmax_temperature,
        "max_logit_scale": pacl.max_logit_scale,
    }


def save_pacl(folder: str | Path, pacl: PACL, meta: dict[str, Any] | None = None) -> Path:
    """Write ``folder/{pacl_config.json, model.safetensors, meta.json}`` atomically.

    Args:
        folder: the PACL's folder (created; an existing one is replaced as a whole).
        pacl: the trained :class:`utils.pacl.PACL`.
        meta: JSON-serialisable facts to keep with it, e.g. ``{"backbone": "course",
            "backbone_key": backbone.cache_key, "image_size": 64, "grid_shape": [16, 16]}``.

    Returns:
        ``folder`` as a Path.
    """
    if not isinstance(pacl, PACL):
        raise TypeError(f"save_pacl saves a utils.pacl.PACL, got {type(pacl).__name__}")
    try:
        meta_text = json.dumps(meta or {}, indent=2)
    except (TypeError, ValueError) as error:
        raise TypeError(f"save_pacl: meta must be JSON-serialisable (str, numbers, lists, dicts): "
                        f"{error}. Convert paths with str() and tensors with .tolist().") from error
    with atomic_folder(folder) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(pacl_config(pacl), indent=2))
        save_model(pacl, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(meta_text)
    return Path(folder)


def load_pacl(folder: str | Path, device: str | torch.device = "cpu",
              backbone: Any | None = None) -> tuple[PACL, dict[str, Any]]:
    """Read what :func:`save_pacl` wrote -> ``(PACL in eval mode, meta)``.

    Args:
        folder: a folder written by :func:`save_pacl`.
        device: where to put the module.
        backbone: optionally the frozen backbone (``utils.backbones.FrozenBackbone``) it will be used
            with; when ``meta`` holds a ``"backbone_key"``, the backbone's ``cache_key`` must
            equal it, else a ValueError says that the PACL was trained on another CLIP.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {CONFIG_FILE}: no trained PACL here. Run notebook 02 "
            "(02_pacl_patch_alignment.ipynb) first; it saves one to <outputs>/02_pacl/.")
    config = read_json_object(config_path, RETRAIN)
    meta_path = folder / META_FILE
    meta = read_json_object(meta_path, RETRAIN) if meta_path.is_file() else {}

    version = config.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {version!r}, this code reads "
                         f"{FORMAT_VERSION}. {RETRAIN}")
    # identity_init=False: the saved weights replace the initialisation anyway.
    pacl = build_from_config(config_path, config,
                             lambda **fields: PACL(identity_init=False, **fields), RETRAIN)
    load_weights(pacl, folder / WEIGHTS_FILE, RETRAIN, device)

    if backbone is not None and BACKBONE_KEY in meta and backbone.cache_key != meta[BACKBONE_KEY]:
        raise ValueError(
            f"{folder}: this PACL was trained on another frozen CLIP (saved backbone key "
            f"{meta[BACKBONE_KEY]!r}, given {backbone.cache_key!r}). Its embedder only makes "
            "sense on the backbone it was trained with: re-run notebook 02 after notebook 01.")
    return pacl.to(device).eval(), meta
