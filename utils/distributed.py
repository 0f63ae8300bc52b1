"""Training on several GPUs and machines with every negative of the global batch in the loss.

The engine is ``torch.distributed``, launched by ``torchrun``: one process per GPU, each holding a
copy of the model, each loading its own shard of the data (``DistributedSampler``), with
``DistributedDataParallel`` (DDP) averaging the gradients. :func:`utils.train.fit` does all of
that by itself as soon as a process group exists (:func:`init_from_torchrun`).

What DDP does not do is make the *loss* global. CLIP's loss (and PACL's) contrasts every image of
a batch with every caption, so with ``R`` processes of ``B`` pairs each a process that only saw
its own ``B`` captions would train on ``B - 1`` negatives instead of ``R * B - 1``. As in open_clip,
every process therefore gathers the embeddings of all processes **with their gradients**
(:func:`gather_with_grad`) and scores its own ``B`` images against all ``N = R * B`` captions and
its own ``B`` captions against all ``N`` images; its targets are its rows of the global
``[N, N]`` problem, i.e. the labels ``arange(B)`` offset by ``rank * B``.

Why the gradients come out exactly right (the test proves it numerically): the global loss is
``L = 1/(2N) * sum over all N rows and N columns``. Process ``r`` computes ``L_r``, the same sum
over its ``B`` rows and ``B`` columns divided by ``2B``, so ``L = mean_r L_r``. The backward of the
gather sums, over processes, the gradients that reach each process's embeddings, so process
``r`` ends up holding ``d(sum_r' L_r')/d(its parameters)``; DDP's average over the ``R``
processes then gives ``d(mean_r L_r)/d(theta) = dL/d(theta)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

from utils.losses import clip_logits
from utils.pacl import pacl_compatibility
from utils.positives import caption_positives, text_id_positives

# (image indices [N], texts [N]) of the global batch -> [N images, N texts] boolean positives.
PositivesRule = Callable[[list[int], list], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

def init_from_torchrun() -> torch.device:
    """Join the process group ``torchrun`` set up and return this process's device.

    ``torchrun`` starts one process per GPU and gives each ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. NCCL is the backend
    for CUDA GPUs, gloo for CPUs (and for the tests).
    """
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError("init_from_torchrun() found no LOCAL_RANK: start the script with "
                           "torchrun (e.g. `torchrun --nproc-per-node=2 script.py`), not python")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL and all_gather_object use the current device
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def is_distributed() -> bool:
    """True inside a process group (torchrun, or the tests' spawned processes)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's number among all processes of all machines (0 alone)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 alone)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 alone logs, draws progress bars and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for alone)."""
    if is_distributed():
        dist.barrier()


def mean_across_processes(value: torch.Tensor) -> torch.Tensor:
    """The average of a tensor over all processes (a copy; no gradient), for logging."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value)
        value /= world_size()
    return value


def broadcast_from_rank_0(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable object) on every process; ``obj`` elsewhere is ignored.

    For what one process builds and all must share exactly (a trained tokenizer), without
    assuming that the machines share a filesystem.
    """
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(items: Sequence) -> list:
    """Concatenate, in rank order, a list of picklable items from every process."""
    if not is_distributed():
        return list(items)
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


# --------------------------------------------------------------------------------------------
# All-gather that carries gradients
# --------------------------------------------------------------------------------------------

def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All processes' ``[B, ...]`` tensors concatenated in rank order: ``[R * B, ...]``.

    Why the gradients are right: every process's loss depends on every process's embeddings, so
    the gradient of the global loss with respect to process ``r``'s rows is the *sum*, over all
    processes, of the gradient that reached rows ``r * B .. (r + 1) * B`` of their gathered copy.
    ``torch.distributed.all_gather`` has no backward at all;
    ``torch.distributed.nn.functional.all_gather`` has exactly this one (a reduce-scatter with
    SUM, emulated by an all-to-all and a sum on backends without it, such as gloo).
    ``tests/test_distributed.py`` checks it against one process that sees the whole batch.

    Alone, the tensor itself. Every process must pass the same shape (``DistributedSampler``
    gives each the same number of samples).
    """
    if not is_distributed():
        return tensor
    sizes = gather_objects([tensor.shape[0]])
    if len(set(sizes)) != 1:
        raise ValueError(f"processes hold batches of different sizes {sizes}: shard the data "
                         "with DistributedSampler so that every process gets the same number")
    return torch.cat(all_gather_with_grad(tensor))


# --------------------------------------------------------------------------------------------
# Contrastive loss over this process's rows of the global batch
# --------------------------------------------------------------------------------------------

def own_rows(batch_size: int) -> slice:
    """Where this process's ``batch_size`` pairs sit in the global batch: the rank offset."""
    return slice(rank() * batch_size, (rank() + 1) * batch_size)


def contrastive_loss_of_rows(image_rows: torch.Tensor, text_rows: torch.Tensor,
                             image_positives: torch.Tensor | None = None,
                             text_positives: torch.Tensor | None = None) -> torch.Tensor:
    """This process's share of CLIP's symmetric cross-entropy (Radford et al. 2021, Fig. 3).

    Args:
        image_rows: ``[B, N]`` logits of this process's ``B`` images against all ``N`` texts.
        text_rows: ``[B, N]`` logits of its ``B`` texts against all ``N`` images.
        image_positives, text_positives: ``[B, N]`` boolean rows of the global positives
            (image ``i`` matches text ``j``) and of their transpose. None: the identity, i.e.
            the target of local row ``i`` is global column ``rank * B + i``.

    Returns:
        Scalar ``(CE(image_rows) + CE(text_rows)) / 2``, each averaged over the ``B`` rows; its
        mean over processes is ``utils.losses.contrastive_loss_from_logits`` of the global
        ``[N, N]`` logits.
    """
    if image_positives is None:
        global_columns = torch.arange(image_rows.shape[1], device=image_rows.device)
        targets = global_columns[own_rows(len(image_rows))]                   # rank offset
        return (F.cross_entropy(image_rows, targets) + F.cross_entropy(text_rows, targets)) / 2
    # A row with several positives spreads its target uniformly over them (as in utils.losses).
    image_targets = image_positives.to(image_rows.dtype)
    text_targets = text_positives.to(text_rows.dtype)
    return (F.cross_entropy(image_rows, image_targets / image_targets.sum(1, keepdim=True))
            + F.cross_entropy(text_rows, text_targets / text_targets.sum(1, keepdim=True))) / 2


def positives_of_rows(batch: dict, text_key: str, rule: PositivesRule | None
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """This process's ``[B, N]`` rows of the global positives and of their transpose.

    The collator's ``positives [B, B]`` only compares a process's images with its own texts; the
    cross-process blocks need the other processes' texts. So the image indices and texts of
    the whole global batch are gathered and ``rule`` rebuilds the ``[N, N]`` matrix, the very
    matrix a single process would have built from the same global batch.
    """
    if rule is None:
        if "positives" in batch:
            raise ValueError("this batch carries positives: give the gathered loss the rule that "
                             "built them (captions_of_images / image_text_ids), so they can be "
                             "extended to the other processes' texts")
        return None, None
    image_index = gather_objects(batch["image_index"].tolist())
    texts = batch[text_key]
    texts = gather_objects(texts.tolist() if torch.is_tensor(texts) else texts)
    positives = rule(image_index, texts).to(batch["image_index"].device)       # [N, N]
    rows = own_rows(len(batch["image_index"]))
    return positives[rows], positives.T[rows]


def caption_positives_rule(captions_of_images: Sequence[Sequence[str]]) -> PositivesRule:
    """The rule of :class:`utils.data.CaptionCollator`: a caption fits every image it describes."""
    def rule(image_index: list[int], captions: list) -> torch.Tensor:
        return caption_positives([captions_of_images[i] for i in image_index], captions).T
    return rule


def text_id_positives_rule(image_text_ids: Sequence[Collection[int]]) -> PositivesRule:
    """The rule of :class:`utils.storage.feature_cache.PACLFeatureCollator`, on text ids."""
    def rule(image_index: list[int], text_ids: list) -> torch.Tensor:
        return text_id_positives([image_text_ids[i] for i in image_index], torch.tensor(text_ids))
    return rule


def gathered_clip_loss(captions_of_images: Sequence[Sequence[str]] | None = None
                       ) -> Callable[[nn.Module, dict], torch.Tensor]:
    """A ``loss_fn(model, batch)`` for :func:`utils.train.fit`: CLIP's loss with all negatives.

    Each process scores its ``B`` images against the ``N`` gathered texts and its ``B`` texts
    against the ``N`` gathered images (``[B, N]`` logits each). Alone it equals
    :func:`utils.losses.clip_batch_loss`. Pass the collator's ``captions_of_images`` when the
    batches carry ``positives``. With several captions per image (``caption_owner``), each image
    embedding is repeated once per caption it brought, as in ``clip_batch_loss``: ``B`` then
    counts texts.
    """
    rule = None if captions_of_images is None else caption_positives_rule(captions_of_images)

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        image_emb, text_emb, logit_scale = model(batch["images"], batch["input_ids"],
                                                 batch["attention_mask"])
        if "caption_owner" in batch:
            image_emb = image_emb[batch["caption_owner"]]                     # [B * K, D]
            batch = {**batch, "image_index": batch["image_index"][batch["caption_owner"]]}
        image_rows = clip_logits(image_emb, gather_with_grad(text_emb), logit_scale)   # [B, N]
        text_rows = clip_logits(text_emb, gather_with_grad(image_emb), logit_scale)    # [B, N]
        return contrastive_loss_of_rows(image_rows, text_rows,
                                        *positives_of_rows(batch, "captions", rule))
    return loss_fn


def gathered_pacl_loss(image_text_ids: Sequence[Collection[int]] | None = None
                       ) -> Callable[[nn.Module, dict], torch.Tensor]:
    """A ``loss_fn(pacl, batch)`` for :func:`utils.train.fit`: PACL's loss with all negatives.

    Row ``i`` of the image side is PACL's compatibility (Eq. 2-3) of local image ``i`` with all
    ``N`` texts; row ``j`` of the text side is the compatibility of all ``N`` images (their
    gathered patch embeddings ``[N, P, D]``) with local text ``j``. Alone it equals
    :func:`utils.pacl.pacl_batch_loss`. Pass the cache's ``image_text_ids`` when the batches
    carry ``positives``.
    """
    rule = None if image_text_ids is None else text_id_positives_rule(image_text_ids)

    def loss_fn(pacl: nn.Module, batch: dict) -> torch.Tensor:
        patch_emb = pacl.embed_patches(batch["patch_emb"].float())                # [B, P, D]
        text_emb = pacl.embed_texts(batch["text_emb"].float())                    # [B, D]
        temperature = pacl.softmax_temperature
        image_rows = pacl_compatibility(patch_emb, gather_with_grad(text_emb), temperature)
        text_rows = pacl_compatibility(gather_with_grad(patch_emb), text_emb, temperature).T
        return contrastive_loss_of_rows(pacl.logit_scale * image_rows,
                                        pacl.logit_scale * text_rows,
                                        *positives_of_rows(batch, "text_ids", rule))
    return loss_fn


# --------------------------------------------------------------------------------------------
# Wrapping for DistributedDataParallel
# --------------------------------------------------------------------------------------------

class ModelWithLoss(nn.Module):
    """``model`` and ``loss_fn`` as one module whose ``forward(batch)`` returns the loss.

    DDP only synchronises gradients of a forward that went through the DDP wrapper. Loss
    functions call whatever methods they need (``pacl.embed_patches``), so the wrapper's forward
    is the whole loss. The parameters are ``model``'s own, under the prefix ``model.``.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def data_parallel(model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor],
                  device: torch.device) -> nn.Module:
    """``ModelWithLoss`` wrapped in DDP inside a process group, as it is otherwise.

    DDP copies rank 0's weights to every process when it wraps, so all start equal.
    ``static_graph``: some course models hold parameters a loss never touches (torchvision's ViT
    classifier head), and DDP would wait for their gradients forever. With a static graph it
    finds them in the first step and skips them from then on.
    """
    step = ModelWithLoss(model, loss_fn)
    if not is_distributed():
        return step
    return nn.parallel.DistributedDataParallel(
        step, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
