"""Encoders, projection heads and the CLIP model (Radford et al. 2021, Sec. 2.4-2.5).

Two sizes of everything, one code path:

- Colab: torchvision ResNet-50 (optionally ImageNet weights) or ViT-B/16, and DistilBERT.
- Offline CPU: a tiny CNN (its last feature map doubles as the grid of "patches" PACL aligns later)
  or a tiny ViT, and a 2-layer DistilBERT built from a config with random weights.

Every image encoder exposes the same two views of an image: ``patch_tokens`` (``[B, P, C]``, one
feature vector per spatial cell) and ``forward`` (``[B, C]``, one vector per image).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_model
from torch import nn
from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

from utils.storage.atomic import atomic_folder
from utils.storage.saved_files import (
    SavedFileError,
    build_from_config,
    load_weights,
    read_json_object,
)

IMAGE_ENCODERS = ("tiny_cnn", "tiny_vit", "resnet50", "vit_b_16")
TEXT_ENCODERS = ("tiny_distilbert", "distilbert")
DISTILBERT_NAME = "distilbert-base-uncased"
RETRAIN_CLIP = "Train and save the CLIP again (notebook 01 or `make demo`)."


# --------------------------------------------------------------------------------------------
# Image encoders
# --------------------------------------------------------------------------------------------

def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ResidualConvBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (a ResNet basic block, fixed width)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels, dilation=dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class TinyConvNet(nn.Module):
    """A small CNN for CPU: ``[B, 3, H, W]`` -> feature map ``[B, width, H/4, W/4]``.

    Two stride-2 stages, then residual blocks at stride 4 (the last one dilated) so that every
    output cell sees about 40 pixels: enough context to tell a star from a cross, while keeping a
    fine 16x16 grid at 64 px for segmentation later.
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn_relu(3, width // 2, stride=2),
                                  _conv_bn_relu(width // 2, width, stride=2))
        self.blocks = nn.Sequential(ResidualConvBlock(width), ResidualConvBlock(width, dilation=2))
        self.out_channels = width
        # Channels-last memory makes these small convolutions ~15% faster on CPU (measured).
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(images.contiguous(memory_format=torch.channels_last)))


class AttentionPool(nn.Module):
    """CLIP's attention pooling for a CNN (Radford et al. 2021, Sec. 2.4), in its simplest form.

    Global average pooling forgets *where* things are, yet captions say "on the left" and "to the
    right of". CLIP's ResNets pool with one round of attention instead: every cell of the feature
    map gets a learned position embedding, the average cell asks the query, every cell answers
    with a key and a value::

        tokens_i = f_i + pos_i                     [B, P, C]
        q = W_q mean_i(tokens),  k_i = W_k tokens_i,  v_i = W_o W_v tokens_i
        pooled = sum_i softmax_i(q . k_i / sqrt(d)) v_i          (per head)

    ``v_i`` is each cell's value in the pooled space, so ``pooled`` is a convex combination of the
    ``v_i``: they are the encoder's *patch tokens* (the equivalent of a ViT's projected patch
    tokens, and what MaskCLIP reads from CLIP's ResNet).

    Args:
        channels: ``C`` of the feature map.
        grid_size: ``(h, w)`` of the feature map at the training resolution; other sizes get the
            position embeddings bilinearly interpolated.
        num_heads: attention heads (``C`` must be divisible by it).
    """

    def __init__(self, channels: int, grid_size: tuple[int, int], num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.grid_size = tuple(grid_size)
        self.position = nn.Parameter(torch.randn(channels, *self.grid_size) * channels ** -0.5)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def _positions(self, height: int, width: int) -> torch.Tensor:
        """``[C, height, width]`` position embeddings, interpolated for another grid size."""
        if (height, width) == self.grid_size:
            return self.position
        return F.interpolate(self.position[None], size=(height, width), mode="bilinear",
                             align_corners=False)[0]

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape                         # -> [B, heads, L, C / heads]
        return x.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(2)                       # [B, heads, L, d] -> [B, L, C]

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, h, w]`` -> (pooled ``[B, C]``, patch tokens ``[B, h*w, C]``)."""
        height, width = feature_map.shape[-2:]
        tokens = (feature_map + self._positions(height, width)).flatten(2).transpose(1, 2)
        query = self._split_heads(self.query(tokens.mean(1, keepdim=True)))   # [B, h, 1, d]
        keys = self._split_heads(self.key(tokens))                            # [B, h, P, d]
        values = self._split_heads(self.value(tokens))                        # [B, h, P, d]
        pooled = F.scaled_dot_product_attention(query, keys, values)         # [B, h, 1, d]
        # W_o is affine and the attention weights sum to 1, so W_o(sum a_i v_i) = sum a_i W_o v_i.
        return self.out(self._merge_heads(pooled))[:, 0], self.out(self._merge_heads(values))


class ImageEncoder(nn.Module):
    """Image backbone with a patch view and a pooled view.

    Args:
        kind: ``"tiny_cnn"`` | ``"tiny_vit"`` (CPU) or ``"resnet50"`` | ``"vit_b_16"`` (Colab).
        pretrained: load ImageNet weights through torchvision (downloads; Colab only).
        image_size: input side length; ViTs need it fixed.
        cnn_width: channels of the tiny CNN.
        attention_pool: CNNs pool their feature map with :class:`AttentionPool` (as CLIP's
            ResNets do) instead of averaging it. ViTs always use their class token. Off by
            default: on the synthetic set it lowered the demo's text->image recall, and its
            patch tokens named the shape under them less often than averaged cells (README, "How
            the demo's settings were chosen").

    Attributes:
        out_dim: channel width ``C`` of both views.
    """

    def __init__(self, kind: str = "tiny_cnn", pretrained: bool = False, image_size: int = 64,
                 cnn_width: int = 64, attention_pool: bool = False):
        super().__init__()
        if kind not in IMAGE_ENCODERS:
            raise ValueError(f"unknown image encoder {kind!r}; choose one of {IMAGE_ENCODERS}")
        self.kind = kind
        if kind == "tiny_cnn":
            self.backbone = TinyConvNet(cnn_width)
            self.out_dim = self.backbone.out_channels
        elif kind == "resnet50":
            weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
            resnet = torchvision.models.resnet50(weights=weights)
            # Keep everything up to the last residual stage; drop the classifier's pooling and head.
            self.backbone = nn.Sequential(*list(resnet.children())[:-2])
            self.out_dim = resnet.fc.in_features
        else:
            self.backbone = _build_vit(kind, pretrained, image_size)
            self.out_dim = self.backbone.hidden_dim
        self.pool = None
        if attention_pool and not self.is_vit:
            with torch.no_grad():  # the grid size at the training resolution, measured
                grid = self.backbone(torch.zeros(1, 3, image_size, image_size)).shape[-2:]
            self.pool = AttentionPool(self.out_dim, tuple(grid), max(1, self.out_dim // 32))

    @property
    def is_vit(self) -> bool:
        return self.kind in ("tiny_vit", "vit_b_16")

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` -> (pooled ``[B, C]``, patch tokens ``[B, P, C]``)."""
        if self.is_vit:
            vit = self.backbone
            x = vit._process_input(images)                           # [B, P, C]
            cls = vit.class_token.expand(x.shape[0], -1, -1)
            x = vit.encoder(torch.cat([cls, x], dim=1))              # [B, 1+P, C], final LN inside
            return x[:, 0], x[:, 1:]
        feature_map = self.backbone(images)                          # [B, C, h, w]
        if self.pool is not None:
            return self.pool(feature_map)                            # attention pooling
        patches = feature_map.flatten(2).transpose(1, 2)             # [B, h*w, C]
        return patches.mean(1), patches                              # global average pooling

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P, C]``, one feature per spatial cell (row-major grid)."""
        return self.tokens(images)[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, C]``: CLS token (ViT) or average-pooled feature map (CNN)."""
        return self.tokens(images)[0]


def _build_vit(kind: str, pretrained: bool, image_size: int) -> torchvision.models.VisionTransformer:
    if kind == "vit_b_16":
        weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1 if pretrained else None
        if pretrained and image_size != 224:
            raise ValueError("the pretrained torchvision ViT-B/16 needs image_size=224")
        return torchvision.models.vit_b_16(weights=weights, image_size=image_size)
    if pretrained:
        raise ValueError("tiny_vit has no pretrained weights; use pretrained=False")
    return torchvision.models.VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256)


# --------------------------------------------------------------------------------------------
# Text encoder
# --------------------------------------------------------------------------------------------

class TextEncoder(nn.Module):
    """DistilBERT; a caption is represented by the hidden state of its first token ([CLS]).

    Args:
        kind: ``"distilbert"`` (the real architecture) or ``"tiny_distilbert"`` (2 layers, width 128).
        pretrained: load ``pretrained_name`` (a hub id or a local folder) instead of random weights.
        vocab_size: size of the tokenizer's vocabulary (needed when not pretrained).
        pad_token_id: id of ``[PAD]`` in that tokenizer.
        dropout: dropout of the tiny configuration (the real one keeps DistilBERT's 0.1).
        length_buckets: encode a batch in this many groups of similar length (see ``forward``).
    """

    def __init__(self, kind: str = "tiny_distilbert", pretrained: bool = False,
                 vocab_size: int | None = None, pad_token_id: int = 0, max_length: int = 64,
                 pretrained_name: str = DISTILBERT_NAME, dropout: float = 0.1,
                 length_buckets: int = 1):
        super().__init__()
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be at least 1, got {length_buckets}")
        self.length_buckets = length_buckets
        if kind not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {kind!r}; choose one of {TEXT_ENCODERS}")
        if pretrained:
            if kind != "distilbert":
                raise ValueError("only kind='distilbert' has pretrained weights")
            self.transformer = DistilBertModel.from_pretrained(pretrained_name)
        else:
            if vocab_size is None:
                raise ValueError("vocab_size is required for a randomly initialised text encoder")
            # The real architecture keeps DistilBERT's defaults (6 layers, width 768); the tiny
            # one is small enough to train from scratch on a laptop CPU in minutes.
            tiny = {} if kind == "distilbert" else dict(
                dim=128, n_layers=2, n_heads=4, hidden_dim=256, max_position_embeddings=max_length,
                dropout=dropout, attention_dropout=dropout)
            config = DistilBertConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **tiny)
            self.transformer = DistilBertModel(config)
        self.out_dim = self.transformer.config.dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids, attention_mask [B, L]`` -> ``[B, H]`` hidden state of the [CLS] token.

        A batch is padded to its longest caption, and a padding token costs as much compute as a
        word. So the captions are sorted by length and encoded in ``length_buckets`` groups, each
        cut to its own longest caption. The result is the same (attention never looks at padding),
        for less work: with captions of 3 to 36 tokens, 3 groups halve the text side's time
        (`bench/clip_step_time.py`).
        """
        self._check_token_ids(input_ids)
        lengths = attention_mask.sum(dim=1)
        order = lengths.argsort()
        states = []
        for group in order.chunk(self.length_buckets):
            longest = int(lengths[group].max())
            hidden = self.transformer(input_ids=input_ids[group, :longest],
                                      attention_mask=attention_mask[group, :longest])
            states.append(hidden.last_hidden_state[:, 0])
        return torch.cat(states)[order.argsort()]     # back to the batch's own order

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        """Refuse ids the embedding tables cannot look up: torch would fail with a bare
        "index out of range in self" deep inside DistilBERT."""
        config = self.transformer.config
        if input_ids.shape[1] > config.max_position_embeddings:
            raise ValueError(
                f"token ids of length {input_ids.shape[1]}, but this text encoder has "
                f"{config.max_position_embeddings} positions: tokenize with truncation=True, "
                f"max_length={config.max_position_embeddings}.")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
            raise ValueError(
                f"token ids outside 0..{config.vocab_size - 1}, this text encoder's vocabulary: "
                "the captions were tokenized with another tokenizer than the one it was built "
                "for. Use the tokenizer saved with the model.")


# --------------------------------------------------------------------------------------------
# Projection head and CLIP
# --------------------------------------------------------------------------------------------

class ProjectionHead(nn.Module):
    """Maps encoder features into the shared embedding space: ``[..., in_dim] -> [..., embed_dim]``.

    ``LayerNorm(p + Dropout(W2 GELU(p)))`` with ``p = W1 x``: a linear projection (as in CLIP) plus a
    small residual MLP that gives the frozen-or-not encoder features some room to adapt. Works on any
    leading shape, so the same head projects pooled features ``[B, C]`` and patch tokens ``[B, P, C]``.
    """

    def __init__(self, in_dim: int, embed_dim: int, dropout: float = 0.1):
        super().__init__()
        self.project = nn.Linear(in_dim, embed_dim)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(embed_dim, embed_dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.project(x)
        return self.norm(projected + self.mlp(projected))


@dataclass
class CLIPConfig:
    """Everything needed to rebuild a :class:`CLIP` (saved next to its checkpoints)."""

    image_encoder: str = "tiny_cnn"
    text_encoder: str = "tiny_distilbert"
    pretrained: bool = False
    image_size: int = 64
    cnn_width: int = 64               # channels of the tiny CNN
    attention_pool: bool = False      # CNNs: CLIP's attention pooling instead of averaging
    embed_dim: int = 128
    dropout: float = 0.1
    init_temperature: float = 0.07    # CLIP: logit scale initialised to 1 / 0.07
    max_logit_scale: float = 100.0    # CLIP: clipped to 100 to keep training stable
    vocab_size: int | None = None     # None with a pretrained text encoder
    pad_token_id: int = 0
    max_length: int = 64
    text_length_buckets: int = 3      # groups of similar caption length (TextEncoder.forward)

    def to_dict(self) -> dict:
        return asdict(self)


class CLIP(nn.Module):
    """Image encoder + text encoder + two projection heads + a learnable temperature.

    ``logit_scale`` is stored as ``log s`` (so ``s`` stays positive under gradient descent),
    initialised to ``log(1 / 0.07)`` and clamped at ``log(100)`` when read (CLIP, Sec. 2.5).
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.image_encoder, config.pretrained, config.image_size,
                                          config.cnn_width, config.attention_pool)
        self.text_encoder = TextEncoder(config.text_encoder, config.pretrained, config.vocab_size,
                                        config.pad_token_id, config.max_length,
                                        dropout=config.dropout,
                                        length_buckets=config.text_length_buckets)
        self.image_projection = ProjectionHead(self.image_encoder.out_dim, config.embed_dim,
                                               config.dropout)
        self.text_projection = ProjectionHead(self.text_encoder.out_dim, config.embed_dim,
                                              config.dropout)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """The multiplier ``s = exp(log_logit_scale)``, clamped at ``max_logit_scale``."""
        return self.log_logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` image embeddings (unit length if ``normalize``)."""
        emb = self.image_projection(self.image_encoder(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    normalize: bool = True) -> torch.Tensor:
        """``[B, L]`` token ids and mask -> ``[B, D]`` text embeddings."""
        emb = self.text_projection(self.text_encoder(input_ids, attention_mask))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_patches(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P, D]``: every patch through the same image projection head.

        This is the course model's counterpart of applying CLIP ViT's final layer norm and visual
        projection to each patch token: the patches land in the joint space, where PACL aligns them.
        """
        emb = self.image_projection(self.image_encoder.patch_tokens(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (image embeddings ``[B, D]``, text embeddings ``[B, D]``, logit scale ``[]``)."""
        return (self.encode_image(images), self.encode_text(input_ids, attention_mask),
                self.logit_scale)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.image_encoder.parameters(), *self.text_encoder.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.image_projection.parameters(), *self.text_projection.parameters(),
                self.log_logit_scale]


# --------------------------------------------------------------------------------------------
# Saving a trained CLIP together with its tokenizer (notebook 01 -> notebook 02)
# --------------------------------------------------------------------------------------------

def save_clip(folder: str | Path, model: CLIP, tokenizer) -> Path:
    """Write ``folder/{clip_config.json, model.safetensors, tokenizer files}`` atomically."""
    with atomic_folder(folder) as tmp:
        (tmp / "clip_config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def load_clip(folder: str | Path, device: str | torch.device = "cpu"):
    """Read what :func:`save_clip` wrote -> ``(CLIP in eval mode, tokenizer)``.

    The encoders are rebuilt from the saved config with random weights and then overwritten by
    the saved ones, so no download happens even for a model that started from pretrained weights.
    """
    folder = Path(folder)
    config_path = folder / "clip_config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{folder} holds no clip_config.json: train and save a CLIP first "
                                f"(notebook 01 or `make demo`)")
    config = build_from_config(config_path, read_json_object(config_path, RETRAIN_CLIP),
                               CLIPConfig, RETRAIN_CLIP)
    saved_pretrained, config.pretrained = config.pretrained, False
    if saved_pretrained and config.vocab_size is None:
        config.vocab_size = DistilBertConfig().vocab_size
    model = build_from_config(config_path, {"config": config}, CLIP, RETRAIN_CLIP)
    model.config.pretrained = saved_pretrained
    load_weights(model, folder / "model.safetensors", RETRAIN_CLIP, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise SavedFileError(f"{folder}: its tokenizer files cannot be read ({error}). "
                             f"{RETRAIN_CLIP}") from error
    return model.to(device).eval(), tokenizer


def clip_parameter_groups(model: nn.Module, encoder_lr: float, head_lr: float,
                          weight_decay: float = 0.1) -> list[dict]:
    """AdamW groups: encoders and heads get their own learning rates (pretrained encoders want a
    small one, fresh heads a larger one). Biases, norms and the temperature get no weight decay."""
    groups = []
    for params, lr in ((model.encoder_parameters(), encoder_lr), (model.head_parameters(), head_lr)):
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
