"""PACL: aligning a frozen CLIP's patch tokens with its text embedding (Mukhoti et al., CVPR 2023).

Both CLIP encoders stay frozen. A small *vision embedder* maps every patch embedding (already in
CLIP's joint space) to a new one, and the contrastive loss of CLIP is computed with PACL's
*compatibility* instead of the plain cosine (PACL Eq. 2-3)::

    s_i       = cos(e_v(patch_i), e_t(y))           similarity of patch i with the text
    a         = softmax_i(s)                        weights over the P patches
    v         = sum_i a_i * e_v(patch_i)            text-specific visual embedding
    phi(x, y) = cos(v, e_t(y))                      compatibility of image x and text y

Only the embedder (and the logit scale) learn, so the frozen backbone's outputs can be computed
once and cached: :func:`cache_features` writes them to disk and :class:`PACLFeatureDataset` trains
from there with :func:`utils.train.fit`.

Sections: compatibility and loss; the trainable modules; frozen backbones (the course's CLIP and
Hugging Face CLIP behind one interface); the feature cache; training from the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPModel

from utils.atomic import atomic_folder
from utils.data import IMAGENET_MEAN, IMAGENET_STD, ImageCaptionDataset, build_transform
from utils.losses import contrastive_loss_from_logits

# The normalisation OpenAI's CLIP was trained with (its image processor's mean and std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_CLIP_NAME = "openai/clip-vit-base-patch16"


# --------------------------------------------------------------------------------------------
# Compatibility and loss (PACL Eq. 2-3)
# --------------------------------------------------------------------------------------------

def _check_patch_text_shapes(patch_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if patch_emb.ndim != 3 or text_emb.ndim != 2 or patch_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(
            f"expected patch_emb [B, P, D] and text_emb [T, D] with the same D, got "
            f"{tuple(patch_emb.shape)} and {tuple(text_emb.shape)}. A single image needs a batch "
            "dimension (patch_emb[None]); a single text too (text_emb[None])."
        )


def patch_text_similarity(patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine of every patch with every text: ``[B, P, D], [T, D] -> [B, T, P]``.

    PACL Eq. 2's ``s_i`` for all images and texts at once; reshaped to the patch grid it is the
    text's heatmap over the image.
    """
    _check_patch_text_shapes(patch_emb, text_emb)
    return torch.einsum("bpd,td->btp", F.normalize(patch_emb, dim=-1), F.normalize(text_emb, dim=-1))


def pacl_compatibility(patch_emb: torch.Tensor, text_emb: torch.Tensor,
                       temperature: float | None = None) -> torch.Tensor:
    """PACL's compatibility of every image with every text (PACL Eq. 2-3).

    Args:
        patch_emb: ``[B, P, D]`` the vision embedder's outputs for the ``P`` patches of ``B`` images.
        text_emb: ``[T, D]`` text embeddings (any norm).
        temperature: divides the patch-text cosines before the softmax over patches; None (the
            paper) uses the cosines as they are, so the weights stay soft.

    Returns:
        ``[B, T]``: ``cos(sum_i a_i patch_i, text)`` with ``a = softmax_i(cos(patch_i, text))``.
        The weighted sum uses the patch embeddings as given, not re-normalised per patch.

    Memory: a direct translation of the formula would build a ``[B, T, P, D]`` tensor (26 GB for
    B = T = 256, P = 196, D = 512 in float32). Here the patches and texts are normalised once, one
    einsum ``bpd,td->btp`` gives all cosines, the softmax runs over ``P``, and a second einsum
    ``btp,bpd->btd`` forms the weighted sums; the largest tensor is ``[B, T, D]``.
    """
    similarity = patch_text_similarity(patch_emb, text_emb)                  # [B, T, P]
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (or None), got {temperature}")
        similarity = similarity / temperature
    weights = similarity.softmax(dim=-1)                                      # sums to 1 over P
    pooled = torch.einsum("btp,bpd->btd", weights, patch_emb)                 # [B, T, D]
    return torch.einsum("btd,td->bt", F.normalize(pooled, dim=-1), F.normalize(text_emb, dim=-1))


def pacl_loss(patch_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
              positives: torch.Tensor | None = None, temperature: float | None = None
              ) -> torch.Tensor:
    """PACL's training loss: CLIP's symmetric cross-entropy over the ``[B, B]`` compatibilities.

    Args:
        patch_emb: ``[B, P, D]`` embedded patches of ``B`` images; image ``i`` is paired with
            ``text_emb[i]``.
        text_emb: ``[B, D]`` text embeddings.
        logit_scale: positive multiplier of the compatibilities (already exponentiated).
        positives: optional ``[B, B]`` boolean, image ``i`` matches text ``j`` (as in
            :func:`utils.losses.clip_loss`). Default: the identity.
        temperature: the softmax temperature of :func:`pacl_compatibility`.

    Returns:
        Scalar loss. With one patch per image (``P = 1``) it equals ``clip_loss`` on those patches.
    """
    if patch_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"pacl_loss pairs image i with text i: got {patch_emb.shape[0]} images "
                         f"and {text_emb.shape[0]} texts")
    logits = logit_scale * pacl_compatibility(patch_emb, text_emb, temperature)   # [B, B]
    return contrastive_loss_from_logits(logits, positives)


# --------------------------------------------------------------------------------------------
# The trainable part
# --------------------------------------------------------------------------------------------

class VisionEmbedder(nn.Module):
    """PACL's vision embedder (paper appendix): ``Linear(x) + Linear(ReLU(Linear(x)))``.

    ``[..., in_dim] -> [..., out_dim]``; about 1M parameters for 768 -> 512 with the default
    ``hidden_dim = out_dim``.

    Args:
        identity_init: start as the identity map (needs ``in_dim == out_dim``): the linear branch
            is the identity and the residual branch's last layer is zero. PACL then starts from
            the raw CLIP patch embeddings instead of a random projection of them.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None,
                 identity_init: bool = False):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.residual = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, out_dim))
        if identity_init:
            self._init_identity(in_dim, out_dim)

    def _init_identity(self, in_dim: int, out_dim: int) -> None:
        if in_dim != out_dim:
            raise ValueError(f"identity_init needs in_dim == out_dim, got {in_dim} -> {out_dim}; "
                             "pass identity_init=False")
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(out_dim))
            self.linear.bias.zero_()
            # Zero only the last layer: the first still gets gradients once this one moves.
            self.residual[-1].weight.zero_()
            self.residual[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.residual(x)


class PACL(nn.Module):
    """Everything PACL trains: the vision embedder and a learnable logit scale.

    Args:
        embed_dim: width ``D`` of the frozen CLIP's joint space (patches and texts).
        hidden_dim: width of the embedder's residual branch (default ``D``).
        text_embedder: also learn an embedder on the text side. OFF by default: the paper trains
            only the vision embedder; switching it on departs from the paper.
        identity_init: see :class:`VisionEmbedder`.
        softmax_temperature: temperature of the softmax over patches (None: the paper's plain
            cosines).
        init_temperature, max_logit_scale: the logit scale starts at ``1 / init_temperature`` and
            is clamped at ``max_logit_scale`` (as in CLIP).
    """

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, text_embedder: bool = False,
                 identity_init: bool = True, softmax_temperature: float | None = None,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.vision_embedder = VisionEmbedder(embed_dim, embed_dim, hidden_dim, identity_init)
        # The same residual block serves the text side when asked for.
        self.text_embedder = (VisionEmbedder(embed_dim, embed_dim, hidden_dim, identity_init)
                              if text_embedder else None)
        self.softmax_temperature = softmax_temperature
        self.max_logit_scale = max_logit_scale
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(log_logit_scale)``, clamped at ``max_logit_scale``."""
        return self.log_logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def embed_patches(self, patch_emb: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` frozen CLIP patch embeddings -> ``[..., D]`` embedded patches."""
        return self.vision_embedder(patch_emb)

    def embed_texts(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` frozen CLIP text embeddings -> ``[..., D]`` (unchanged without a text embedder)."""
        return text_emb if self.text_embedder is None else self.text_embedder(text_emb)

    def forward(self, patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, P, D]`` frozen patch embeddings, ``[T, D]`` text embeddings -> ``[B, T]``
        compatibilities (PACL Eq. 3, without the logit scale)."""
        return pacl_compatibility(self.embed_patches(patch_emb), self.embed_texts(text_emb),
                                  self.softmax_temperature)


def pacl_parameter_groups(pacl: PACL, lr: float, weight_decay: float = 0.05) -> list[dict]:
    """AdamW groups for :func:`utils.train.fit`: weight matrices decay, biases and the logit scale
    do not (decaying the scale would pull the temperature towards 1)."""
    params = [p for p in pacl.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------
# Frozen backbones: one interface for the course's CLIP and Hugging Face CLIP
# --------------------------------------------------------------------------------------------

class FrozenBackbone(ABC):
    """What PACL needs from a frozen CLIP; one adapter per kind of model implements it.

    The wrapped model is frozen in place (``requires_grad=False``, eval mode) and every output is
    computed without gradients, on the model's device.
    """

    kind = ""

    def __init__(self, model: nn.Module, tokenizer, max_length: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_transform(self, image_size: int) -> Callable[..., dict[str, Any]]:
        """The eval transform this backbone expects: resize to a square, normalise."""
        return build_transform(image_size, train=False, mean=self.mean, std=self.std)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``T`` texts -> ``[T, D]`` unit-length CLIP text embeddings (on the model's device)."""
        if isinstance(texts, str) or not texts:
            raise ValueError("text_embeddings takes a non-empty list of strings, e.g. ['a dog']")
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        # Only these two: a BERT-style tokenizer adds token_type_ids, which CLIP does not take.
        emb = self._encode_tokens(tokens["input_ids"].to(self.device),
                                  tokens["attention_mask"].to(self.device))
        return F.normalize(emb, dim=-1)

    @abstractmethod
    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P, D]`` patch embeddings in the joint space (not normalised)."""

    @abstractmethod
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` unit-length CLIP image embeddings."""

    @abstractmethod
    def grid_shape(self, image_size: int) -> tuple[int, int]:
        """``(h, w)`` of the patch grid for square ``image_size`` inputs (row-major, ``P = h*w``)."""

    @abstractmethod
    def _encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """``[T, L]`` token ids and mask -> ``[T, D]`` text embeddings (any norm)."""

    @abstractmethod
    def _config(self) -> dict:
        """The model's settings that shape its outputs besides the weights (for ``cache_key``)."""

    @property
    def cache_key(self) -> str:
        """``kind-<hash>`` of the weights, the architecture settings, the tokenizer's vocabulary
        and the image normalisation: features cached under another key were made by another model.
        Hashes every weight (about a second for ViT-B/16)."""
        digest = hashlib.blake2b(digest_size=16)
        settings = {"kind": self.kind, "config": self._config(), "mean": self.mean,
                    "std": self.std, "max_length": self.max_length}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
        _hash_weights(digest, self.model)
        return f"{self.kind}-{digest.hexdigest()}"


def _hash_weights(digest: Any, model: nn.Module) -> None:
    """Feed every tensor of ``model.state_dict()`` (name, dtype, shape, bytes) into ``digest``."""
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1).cpu()
        # Reinterpret as bytes (works for bfloat16 too, which numpy cannot hold).
        digest.update(flat.view(torch.uint8).numpy().data)


class CourseCLIPBackbone(FrozenBackbone):
    """The course's :class:`utils.models.CLIP` (and its tokenizer) as a frozen PACL backbone.

    Patch embeddings are the last feature map's cells (or ViT patch tokens) through the image
    projection head (``encode_patches(normalize=False)``); images use ImageNet's normalisation,
    as the course's CLIP was trained with.
    """

    kind = "course_clip"

    def __init__(self, model: nn.Module, tokenizer, max_length: int | None = None):
        super().__init__(model, tokenizer, max_length or model.config.max_length,
                         IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P, D]`` patch embeddings in the joint space (not normalised)."""
        return self.model.encode_patches(images.to(self.device), normalize=False)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` unit-length CLIP image embeddings."""
        return self.model.encode_image(images.to(self.device))

    def _encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask, normalize=False)

    @torch.no_grad()
    def grid_shape(self, image_size: int) -> tuple[int, int]:
        """``(h, w)`` of the patch grid for square ``image_size`` inputs (row-major, ``P = h*w``)."""
        encoder = self.model.image_encoder
        if encoder.is_vit:
            side = image_size // encoder.backbone.patch_size
            return side, side
        # CNN strides and paddings make the size arithmetic kind-specific: measure it instead.
        probe = torch.zeros(1, 3, image_size, image_size, device=self.device)
        height, width = encoder.backbone(probe).shape[-2:]
        return int(height), int(width)

    def _config(self) -> dict:
        return self.model.config.to_dict()


class HFCLIPBackbone(FrozenBackbone):
    """A Hugging Face ``CLIPModel`` (and its tokenizer) as a frozen PACL backbone.

    Patch tokens are ``last_hidden_state[:, 1:]`` of the vision transformer; CLIP applies its final
    layer norm and projection only to the class token, so both are applied here to every patch
    token. Works with transformers 4.x and 5.x.
    """

    kind = "hf_clip"

    def __init__(self, model: nn.Module, tokenizer, max_length: int | None = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        super().__init__(model, tokenizer,
                         max_length or model.config.text_config.max_position_embeddings, mean, std)

    def _size_arguments(self, images: torch.Tensor) -> dict:
        # Other input sizes need the position embeddings interpolated. The argument is passed only
        # then, so the model's own size also works with 4.x releases that lack it.
        native = self.model.config.vision_config.image_size
        return {} if tuple(images.shape[-2:]) == (native, native) else {
            "interpolate_pos_encoding": True}

    @torch.no_grad()
    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P, D]``: ``visual_projection(post_layernorm(patch tokens))``."""
        images = images.to(self.device)
        vision = self.model.vision_model
        hidden = vision(pixel_values=images, **self._size_arguments(images)).last_hidden_state
        return self.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` unit-length CLIP image embeddings."""
        images = images.to(self.device)
        output = self.model.get_image_features(pixel_values=images, **self._size_arguments(images))
        return F.normalize(_features(output), dim=-1)

    def _encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        return _features(self.model.get_text_features(input_ids=input_ids,
                                                      attention_mask=attention_mask))

    def grid_shape(self, image_size: int) -> tuple[int, int]:
        """``(h, w)`` of the patch grid for square ``image_size`` inputs (row-major, ``P = h*w``)."""
        side = image_size // self.model.config.vision_config.patch_size
        return side, side

    def _config(self) -> dict:
        return _architecture_settings(self.model.config.to_dict())


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4.x, a model output in 5.x."""
    return output if torch.is_tensor(output) else output.pooler_output


def _architecture_settings(config: dict) -> dict:
    """A config dict without what does not change the outputs (library version, load path, ...)."""
    ignored = {"transformers_version", "architectures", "dtype", "torch_dtype"}
    return {key: _architecture_settings(value) if isinstance(value, dict) else value
            for key, value in config.items() if key not in ignored and not str(key).startswith("_")}


def load_hf_clip(name: str = HF_CLIP_NAME, device: str | torch.device = "cpu") -> HFCLIPBackbone:
    """A pretrained Hugging Face CLIP (hub name or local folder) as a frozen backbone.

    Downloads ``name`` the first time (about 600 MB for ViT-B/16); on Colab that is the default
    ``openai/clip-vit-base-patch16``, the paper's backbone.
    """
    try:
        model = CLIPModel.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise OSError(
            f"Could not load the CLIP model {name!r} (see the error above). A hub name needs the "
            "network the first time (HF_HUB_OFFLINE=1 forbids it) or a copy in the local Hugging "
            "Face cache; a folder must hold what save_pretrained writes. Offline, use the course's "
            "own CLIP: CourseCLIPBackbone(*utils.models.load_clip(folder))."
        ) from error
    return HFCLIPBackbone(model.to(device), tokenizer)


# --------------------------------------------------------------------------------------------
# Feature cache: the frozen backbone's outputs, computed once
# --------------------------------------------------------------------------------------------

CACHE_FORMAT = 1
PATCHES_FILE = "patch_emb.npy"
TEXTS_FILE = "text_emb.npy"
MANIFEST_FILE = "manifest.json"


@dataclass
class FeatureCache:
    """Frozen-backbone features of one dataset, as :func:`cache_features` wrote them.

    Attributes:
        folder: where the files are.
        image_names: ``N`` image file names, in the order of ``patch_emb``.
        texts: ``T`` distinct training texts, in the order of ``text_emb``.
        image_text_ids: for each image, the indices into ``texts`` of its training texts.
        patch_emb: ``[N, P, D]`` float16, memory-mapped (read from disk as needed).
        text_emb: ``[T, D]`` float16, unit length.
        grid_shape: ``(h, w)`` with ``h * w = P``.
        key: what the cache was made from (backbone, dataset, image size, texts).
    """

    folder: Path
    image_names: list[str]
    texts: list[str]
    image_text_ids: list[list[int]]
    patch_emb: np.ndarray
    text_emb: np.ndarray
    grid_shape: tuple[int, int]
    key: dict

    @classmethod
    def load(cls, folder: str | Path) -> FeatureCache:
        """Open a cache folder written by :func:`cache_features`."""
        folder = Path(folder)
        if not (folder / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no {MANIFEST_FILE}: not a PACL feature cache "
                                    "(build one with utils.pacl.cache_features)")
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        cache = cls(folder, manifest["image_names"], manifest["texts"], manifest["image_text_ids"],
                    np.load(folder / PATCHES_FILE, mmap_mode="r"),
                    np.load(folder / TEXTS_FILE, mmap_mode="r"),
                    tuple(manifest["grid_shape"]), manifest["key"])
        if (cache.patch_emb.shape[0] != len(cache.image_names)
                or cache.text_emb.shape[0] != len(cache.texts)):
            raise ValueError(f"{folder}: the arrays do not match {MANIFEST_FILE}; delete the "
                             "folder and build the cache again")
        return cache

    def __len__(self) -> int:
        return len(self.image_names)


def cache_features(backbone: FrozenBackbone, images_dir: str | Path,
                   items: Sequence[tuple[str, Sequence[str]]], image_size: int,
                   cache_dir: str | Path, dataset_key: str, *, batch_size: int = 64,
                   num_workers: int = 0, progress: bool = True) -> FeatureCache:
    """Compute the frozen backbone's patch and text embeddings once and keep them on disk.

    Args:
        backbone: a :class:`CourseCLIPBackbone` or :class:`HFCLIPBackbone`.
        images_dir: folder of the image files.
        items: ``(image file name, training texts of that image)`` pairs; build the texts with
            :func:`utils.prompts.training_texts` from the image's captions and object words
            (:func:`~utils.prompts.extract_nouns` of the captions on Flickr8k,
            :func:`~utils.prompts.synthetic_object_words` on the synthetic set). Texts are used as
            given; equal strings are stored (and embedded) once.
        image_size: images are resized to this square with the backbone's eval transform (no
            augmentation: the cache holds one view of each image).
        cache_dir: parent folder of the caches.
        dataset_key: names the image set (e.g. ``"flickr8k-train"``); part of the cache's key.

    Returns:
        The :class:`FeatureCache`. It lives in ``cache_dir/<dataset_key>_<size>px_<hash>/``, the
        hash covering ``backbone.cache_key``, ``dataset_key``, ``image_size`` and the items, so a
        different model, dataset, size or text set never reuses a stale cache, and a second call
        with the same inputs reuses it without touching the backbone. The folder is built under a
        temporary name and renamed into place: it is either complete or absent.
    """
    items = _checked_items(items)
    if not dataset_key or not isinstance(dataset_key, str):
        raise ValueError("dataset_key must be a non-empty string naming the image set, "
                         "e.g. 'flickr8k-train'")
    key = {"format": CACHE_FORMAT, "backbone": backbone.cache_key, "dataset": dataset_key,
           "image_size": image_size, "items": _digest(items)}
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{_slug(dataset_key)}_{image_size}px_{_digest(key)[:16]}"
    cached = _load_if_valid(folder, key)
    if cached is not None:
        return cached

    # A cache of the same key that failed to load (damaged, unreadable) is replaced.
    with atomic_folder(folder) as building:
        _write_patch_embeddings(backbone, images_dir, items, image_size, building / PATCHES_FILE,
                                batch_size, num_workers, progress)
        texts, image_text_ids = _index_texts(items)
        _write_text_embeddings(backbone, texts, building / TEXTS_FILE, batch_size, progress)
        manifest = {"key": key, "image_names": [name for name, _ in items], "texts": texts,
                    "image_text_ids": image_text_ids,
                    "grid_shape": list(backbone.grid_shape(image_size))}
        (building / MANIFEST_FILE).write_text(json.dumps(manifest))
    return FeatureCache.load(folder)


def _checked_items(items: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, list[str]]]:
    if not items:
        raise ValueError("cache_features got no items: pass (image name, texts) pairs")
    checked = []
    for name, texts in items:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"image {name!r} needs a non-empty list of text strings, got "
                             f"{texts!r}; build it with utils.prompts.training_texts")
        checked.append((name, list(texts)))
    return checked


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    """``text`` safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "dataset"


def _load_if_valid(folder: Path, key: dict) -> FeatureCache | None:
    """The cache in ``folder`` if it is complete and was made from ``key``, else None."""
    try:
        cache = FeatureCache.load(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cache if cache.key == key else None


def _write_patch_embeddings(backbone: FrozenBackbone, images_dir: str | Path,
                            items: list[tuple[str, list[str]]], image_size: int, path: Path,
                            batch_size: int, num_workers: int, progress: bool) -> None:
    """All images' patch embeddings -> ``path`` (``.npy``, ``[N, P, D]`` float16), batch by batch
    through a memory map, so the whole array never has to fit in memory."""
    dataset = ImageCaptionDataset(images_dir, items, backbone.image_transform(image_size),
                                  caption_index=0)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    array, start = None, 0
    for batch in tqdm(loader, desc="caching patch embeddings", disable=not progress):
        patches = backbone.patch_embeddings(batch["image"]).float().cpu().numpy()
        if array is None:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                              shape=(len(items), *patches.shape[1:]))
        array[start:start + len(patches)] = patches
        start += len(patches)
    array.flush()
    del array  # close the memory map before the folder is renamed


def _index_texts(items: list[tuple[str, list[str]]]) -> tuple[list[str], list[list[int]]]:
    """Distinct texts (first occurrence first) and, per image, the indices of its texts."""
    index: dict[str, int] = {}
    image_text_ids = [[index.setdefault(text, len(index)) for text in dict.fromkeys(texts)]
                      for _, texts in items]
    return list(index), image_text_ids


def _write_text_embeddings(backbone: FrozenBackbone, texts: list[str], path: Path,
                           batch_size: int, progress: bool) -> None:
    """``[T, D]`` float16 text embeddings of ``texts`` -> ``path`` (``.npy``)."""
    chunks = [backbone.text_embeddings(texts[start:start + batch_size]).float().cpu()
              for start in tqdm(range(0, len(texts), batch_size), desc="caching text embeddings",
                                disable=not progress)]
    np.save(path, torch.cat(chunks).numpy().astype(np.float16))


# --------------------------------------------------------------------------------------------
# Training the embedder from the cache (plugs into utils.train.fit)
# --------------------------------------------------------------------------------------------

class PACLFeatureDataset(Dataset):
    """One item per cached image: its patch embeddings and one of its texts.

    Item ``i``: ``{"patch_emb": [P, D] float16, "text_id": int, "image_index": i}``. The text is
    drawn uniformly from the image's texts on every access, with torch's RNG (so the seeding in
    :func:`utils.train.fit` makes epochs reproducible).
    """

    def __init__(self, cache: FeatureCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self.cache))[index]  # IndexError when out of range
        text_ids = self.cache.image_text_ids[index]
        # np.array copies the row out of the read-only memory map, so torch gets writable memory.
        return {"patch_emb": torch.from_numpy(np.array(self.cache.patch_emb[index])),
                "text_id": text_ids[int(torch.randint(len(text_ids), ()))],
                "image_index": index}


def text_id_positives(image_text_ids: Sequence[Collection[int]], text_ids: torch.Tensor
                      ) -> torch.Tensor:
    """``[B, B]`` boolean: ``positives[i, j]`` when text ``j`` of the batch is one of image ``i``'s.

    ``image_text_ids[i]`` holds the text indices of the batch's image ``i``. Equal strings share an
    index, so a prompt such as "a photo of a dog." counts as a match for every image it fits,
    not as a negative.
    """
    return torch.stack([torch.isin(text_ids, torch.as_tensor(list(ids), dtype=text_ids.dtype))
                        for ids in image_text_ids])


class PACLFeatureCollator:
    """Batches :class:`PACLFeatureDataset` items for :func:`pacl_batch_loss`.

    Returns ``patch_emb [B, P, D]`` and ``text_emb [B, D]`` (float16, looked up from the cache),
    ``positives [B, B]`` (:func:`text_id_positives`), ``text_ids [B]`` and ``image_index [B]``.
    """

    def __init__(self, cache: FeatureCache):
        self.text_emb = torch.from_numpy(np.array(cache.text_emb))
        self.image_text_ids = [frozenset(ids) for ids in cache.image_text_ids]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        text_ids = torch.tensor([sample["text_id"] for sample in samples])
        image_index = torch.tensor([sample["image_index"] for sample in samples])
        return {
            "patch_emb": torch.stack([sample["patch_emb"] for sample in samples]),
            "text_emb": self.text_emb[text_ids],
            "positives": text_id_positives([self.image_text_ids[i] for i in image_index.tolist()],
                                           text_ids),
            "text_ids": text_ids,
            "image_index": image_index,
        }


def pacl_feature_loader(cache: FeatureCache, batch_size: int, shuffle: bool = True,
                        num_workers: int = 0) -> DataLoader:
    """A DataLoader over the cache for :func:`utils.train.fit` (incomplete last batch dropped)."""
    if batch_size > len(cache):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(cache)} cached images: "
                         "lower it")
    return DataLoader(PACLFeatureDataset(cache), batch_size=batch_size, shuffle=shuffle,
                      drop_last=True, num_workers=num_workers, collate_fn=PACLFeatureCollator(cache))


def pacl_batch_loss(pacl: PACL, batch: dict) -> torch.Tensor:
    """PACL loss of one batch (the ``loss_fn`` of :func:`utils.train.fit`).

    ``batch`` holds frozen-backbone ``patch_emb [B, P, D]`` and ``text_emb [B, D]`` (any float
    type; float16 from the cache is computed in float32 here) and optionally ``positives [B, B]``.
    """
    patch_emb = pacl.embed_patches(batch["patch_emb"].float())
    text_emb = pacl.embed_texts(batch["text_emb"].float())
    return pacl_loss(patch_emb, text_emb, pacl.logit_scale, batch.get("positives"),
                     pacl.softmax_temperature)
