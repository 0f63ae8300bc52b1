"""What a notebook rebuilds when an earlier notebook's results are not there.

On Colab every notebook is its own runtime: nothing notebook 02 saved under ``/content`` exists
when notebook 03 starts in another one. Two ways out, both here:

- :func:`keep_outputs_in_drive` (opt-in) mounts Google Drive and sends every notebook's outputs
  there, so 03 finds the PACL that 02 trained;
- :func:`rebuild_pacl` trains PACL again with notebook 02's recipe (:func:`train_pacl_recipe`:
  training texts -> feature cache -> vision embedder) and saves it where 03 looks for it.

The demo (:mod:`utils.course.demo`) trains its PACL with the same :func:`train_pacl_recipe`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.backbones import FrozenBackbone
from utils.course.notebook import OUTPUTS_ENV
from utils.data import load_split, locate_dataset
from utils.pacl import PACL, pacl_batch_loss, pacl_parameter_groups
from utils.prompts import FLICKR_VOCABULARY, PhraseVocabulary, training_texts
from utils.sources.flickr8k import FLICKR8K_ARCHIVES, FLICKR8K_BASE_URL, prepare_flickr8k
from utils.storage.feature_cache import cache_features, pacl_feature_loader
from utils.storage.pacl_io import BACKBONE_KEY, save_pacl
from utils.train import History, TrainConfig, fit, seed_everything

DRIVE_MOUNT = "/content/drive"


def keep_outputs_in_drive(folder: str = "clip-pacl-outputs", mount_point: str = DRIVE_MOUNT
                          ) -> Path:
    """Mount Google Drive (Colab asks for permission) and keep the notebooks' outputs in
    ``MyDrive/<folder>``: sets ``CLIP_PACL_OUTPUTS``, which :func:`utils.course.notebook.outputs_dir`
    reads, so every later call in this runtime, and every notebook that does the same, uses it."""
    from google.colab import drive  # only on Colab

    drive.mount(mount_point)
    outputs = Path(mount_point) / "MyDrive" / folder
    outputs.mkdir(parents=True, exist_ok=True)
    os.environ[OUTPUTS_ENV] = str(outputs)
    print(f"outputs -> {outputs} (kept in Google Drive between runtimes)")
    return outputs


@dataclass(frozen=True)
class PACLRecipe:
    """How notebook 02 trains PACL on OpenAI's CLIP (its parameters cell, Colab branch)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float | None = 0.1
    seed: int = 0


def train_pacl_recipe(backbone: FrozenBackbone, images_dir: Path,
                      train_items: Sequence[tuple[str, Sequence[str]]],
                      vocabulary: PhraseVocabulary, image_size: int, cache_dir: Path,
                      cache_name: str, recipe: PACLRecipe, *, embedder_seed: int | None = None,
                      with_captions: bool = False, image_array: Path | None = None,
                      num_workers: int = 0, progress: bool = True) -> tuple[PACL, History]:
    """PACL on a frozen CLIP, as notebook 02 builds it step by step.

    Each image's texts are the object phrases its captions name, each in one prompt template
    drawn with ``recipe.seed`` (:func:`utils.prompts.training_texts`; the captions too with
    ``with_captions``); the backbone's patch and text embeddings are cached once
    (:func:`utils.storage.feature_cache.cache_features`, reused when valid); the vision embedder
    starts and draws its batches with ``embedder_seed`` (default ``recipe.seed``).

    Returns:
        The trained :class:`utils.pacl.PACL` (eval mode) and its training history.
    """
    rng = np.random.default_rng(recipe.seed)
    items = [(name, training_texts(captions, vocabulary, rng=rng, with_captions=with_captions))
             for name, captions in train_items]
    cache = cache_features(backbone, images_dir, items, image_size, cache_dir, cache_name,
                           image_array=image_array, num_workers=num_workers, progress=progress)
    seed = recipe.seed if embedder_seed is None else embedder_seed
    seed_everything(seed)
    pacl = PACL(cache.patch_emb.shape[-1], softmax_temperature=recipe.temperature)
    history = fit(pacl, pacl_parameter_groups(pacl, recipe.lr),
                  pacl_feature_loader(cache, recipe.batch_size), pacl_batch_loss,
                  TrainConfig(epochs=recipe.epochs, seed=seed, eval_every=0, progress=progress))
    return pacl.eval(), history


def rebuild_pacl(backbone: FrozenBackbone, pacl_dir: Path, flickr8k_root: Path, image_size: int,
                 recipe: PACLRecipe = PACLRecipe(), *, base_url: str = FLICKR8K_BASE_URL, archives: dict[str, str] = FLICKR8K_ARCHIVES,
                 num_workers: int = 0, progress: bool = True) -> Path:
    """Train PACL on Flickr8k's training split with notebook 02's recipe; save it to
    ``pacl_dir`` (with the backbone's key, which :func:`utils.storage.pacl_io.load_pacl` checks).

    Downloads Flickr8k into ``flickr8k_root`` first if it is not there (about 1 GB); runs the
    backbone once over the training images (the longest step), then trains the small embedder.
    """
    files = locate_dataset(prepare_flickr8k(flickr8k_root, base_url=base_url, archives=archives,
                                            progress=progress))
    train_items = load_split(files, "train")
    print(f"Training PACL with notebook 02's recipe: {len(train_items)} Flickr8k training images "
          f"through the frozen CLIP once, then {recipe.epochs} epochs of the vision embedder.")
    pacl, _ = train_pacl_recipe(backbone, files.images_dir, train_items, FLICKR_VOCABULARY,
                                image_size, pacl_dir.parent / "features", "flickr8k-train", recipe,
                                num_workers=num_workers, progress=progress)
    return save_pacl(pacl_dir, pacl, meta={
        BACKBONE_KEY: backbone.cache_key, "dataset": "flickr8k", "image_size": image_size,
        "grid_shape": list(backbone.grid_shape(image_size)), "epochs": recipe.epochs,
        "rebuilt_by": "utils.course.standalone.rebuild_pacl"})
