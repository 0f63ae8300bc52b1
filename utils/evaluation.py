"""Embed a whole split with a trained CLIP and measure retrieval on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from utils.data import ImageCaptionDataset, build_transform
from utils.metrics import retrieval_metrics
from utils.positives import caption_positives


@torch.no_grad()
def embed_images(model: nn.Module, loader: DataLoader, progress: bool = True) -> torch.Tensor:
    """All images of ``loader`` (dicts with ``"image"`` or ``"images"``) -> ``[N, D]`` on CPU."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for batch in tqdm(loader, desc="embedding images", leave=False, disable=not progress):
        images = batch["images"] if "images" in batch else batch["image"]
        chunks.append(model.encode_image(images.to(device)).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def embed_texts(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256,
                max_length: int | None = None, progress: bool = True) -> torch.Tensor:
    """Captions -> ``[T, D]`` unit-length text embeddings on CPU.

    Captions are cut at ``max_length`` tokens, by default the length the model was trained with
    (``model.config.max_length``), so evaluation sees the same words training did.
    """
    max_length = max_length or model.config.max_length
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding texts", leave=False,
                      disable=not progress):
        tokens = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt")
        chunks.append(model.encode_text(tokens["input_ids"].to(device),
                                        tokens["attention_mask"].to(device)).float().cpu())
    return torch.cat(chunks)


@dataclass
class SplitEmbeddings:
    """A split embedded once: images ``[I, D]``, every caption ``[T, D]`` and which images each
    caption fits (``positives [T, I]``, exact caption text shared counts as a hit)."""

    image_names: list[str]
    image_emb: torch.Tensor
    texts: list[str]
    text_emb: torch.Tensor
    positives: torch.Tensor

    def metrics(self) -> dict[str, float]:
        return retrieval_metrics(self.image_emb, self.text_emb, self.positives)


def embed_split(model: nn.Module, tokenizer, images_dir: str | Path,
                items: Sequence[tuple[str, Sequence[str]]], image_size: int,
                batch_size: int = 256, num_workers: int = 0, progress: bool = True
                ) -> SplitEmbeddings:
    """Embed every image and every caption of a split (``items`` from ``utils.data.load_split``)."""
    dataset = ImageCaptionDataset(images_dir, items, build_transform(image_size, train=False),
                                  caption_index=0)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    texts = [caption for _, captions in items for caption in captions]
    return SplitEmbeddings(
        image_names=[name for name, _ in items],
        image_emb=embed_images(model, loader, progress),
        texts=texts,
        text_emb=embed_texts(model, tokenizer, texts, batch_size, progress=progress),
        positives=caption_positives([captions for _, captions in items], texts),
    )
