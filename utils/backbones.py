"""Frozen CLIP backbones for PACL: the course's CLIP and Hugging Face CLIP behind one interface.

PACL (Mukhoti et al., CVPR 2023) keeps both CLIP encoders frozen and needs three things from
them: the *patch* embeddings of an image in the joint space (``[B, P, D]``), the text embeddings
(``[T, D]``) and, for comparison, CLIP's own image embeddings. :class:`FrozenBackbone` states that
interface; :class:`CourseCLIPBackbone` implements it for :class:`utils.models.CLIP` (notebook 01)
and :class:`HFCLIPBackbone` for a Hugging Face ``CLIPModel`` such as OpenAI's ViT-B/16
(:func:`load_hf_clip`). Its ``cache_key`` identifies the model, so cached features
(:mod:`utils.storage.feature_cache`) are never reused for another one.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPModel

from utils.data import IMAGENET_MEAN, IMAGENET_STD, build_transform

# The normalisation OpenAI's CLIP was trained with (its image processor's mean and std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_CLIP_NAME = "openai/clip-vit-base-patch16"


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

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The CLIP's learned logit scale (the inverse temperature of its softmax)."""

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

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach())

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

    def size_arguments(self, images: torch.Tensor) -> dict:
        """Extra keyword arguments the vision model needs for ``images``' size."""
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
        hidden = vision(pixel_values=images, **self.size_arguments(images)).last_hidden_state
        return self.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` unit-length CLIP image embeddings."""
        images = images.to(self.device)
        output = self.model.get_image_features(pixel_values=images, **self.size_arguments(images))
        return F.normalize(_features(output), dim=-1)

    def _encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        return _features(self.model.get_text_features(input_ids=input_ids,
                                                      attention_mask=attention_mask))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())  # Hugging Face stores log(scale)

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
    except (OSError, ValueError) as error:   # transformers 4.x: a missing folder is a ValueError
        raise OSError(
            f"Could not load the CLIP model {name!r} (see the error above). A hub name needs the "
            "network the first time (HF_HUB_OFFLINE=1 forbids it) or a copy in the local Hugging "
            "Face cache; a folder must hold what save_pretrained writes. Offline, use the course's "
            "own CLIP: CourseCLIPBackbone(*utils.models.load_clip(folder))."
        ) from error
    return HFCLIPBackbone(model.to(device), tokenizer)
