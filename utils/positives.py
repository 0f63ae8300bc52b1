"""Which image-text pairs count as matches: the positives of the loss and of retrieval.

A batch (or a test split) is a grid of images and texts; the diagonal pairs are the ones that came
together, but they are not always the only matches. Flickr8k gives each image five captions, and
on the synthetic set one short caption ("a red circle") fits many images. Counting such pairs as
negatives would teach the model to push apart things that match, and would score a right answer
in retrieval as a miss. Every builder here returns a boolean matrix, ``True`` where a pair
matches; :func:`utils.losses.clip_loss` and :func:`utils.metrics.recall_at_k` take it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import torch


def same_image_positives(image_ids: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` boolean matrix: pair ``(i, j)`` is positive when both come from the same image.

    Use it with :func:`utils.losses.clip_loss` when a batch may hold several captions of one image
    (Flickr8k has five), so those captions are not pushed apart as negatives.
    """
    return image_ids[:, None] == image_ids[None, :]


def positives_from_text_to_image(text_to_image: torch.Tensor, num_images: int) -> torch.Tensor:
    """``[T] image index per caption`` -> ``[T, num_images]`` boolean positives matrix."""
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    if text_to_image.numel() and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image holds indices outside [0, {num_images})")
    positives = torch.zeros(len(text_to_image), num_images, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    return positives


def caption_positives(
    captions_of_images: Sequence[Sequence[str]], texts: Sequence[str]
) -> torch.Tensor:
    """``positives[j, i]`` is True when ``texts[j]`` is one of image ``i``'s captions.

    Captions are compared after ``strip().lower()``. Returns BoolTensor ``[num_texts,
    num_images]``. On the synthetic set one caption ("a red circle") fits many images; retrieval
    counts any of them as a hit.
    """
    images_with_caption: dict[str, list[int]] = {}
    for image_index, captions in enumerate(captions_of_images):
        for caption in _normalised(captions):
            images_with_caption.setdefault(caption, []).append(image_index)
    rows, columns = [], []
    for text_index, text in enumerate(_normalised(texts)):
        for image_index in images_with_caption.get(text, ()):
            rows.append(text_index)
            columns.append(image_index)
    positives = torch.zeros(len(texts), len(captions_of_images), dtype=torch.bool)
    positives[rows, columns] = True
    return positives


def text_id_positives(image_text_ids: Sequence[Collection[int]], text_ids: torch.Tensor
                      ) -> torch.Tensor:
    """``[B, B]`` boolean: ``positives[i, j]`` when text ``j`` of the batch is one of image ``i``'s.

    ``image_text_ids[i]`` holds the text indices of the batch's image ``i``. Equal strings share an
    index, so a prompt such as "a photo of a dog." counts as a match for every image it fits,
    not as a negative.
    """
    return torch.stack([torch.isin(text_ids, torch.as_tensor(list(ids), dtype=text_ids.dtype))
                        for ids in image_text_ids])


def _normalised(texts: Iterable[str]) -> Iterable[str]:
    return (text.strip().lower() for text in texts)
