"""Two gloo processes on CPU train exactly like one process that sees the same global batches.

One module fixture runs everything: the single-process references here, then one ``mp.spawn`` of
two processes (starting them is the slow part) that compute the gathered losses and gradients,
train, and resume from the single-process checkpoint. The tests compare what both wrote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import DataLoader, DistributedSampler

import utils.train
from utils.data import (
    CaptionCollator,
    ImageCaptionDataset,
    build_transform,
    load_split,
    locate_dataset,
)
from utils.distributed import (
    broadcast_from_rank_0,
    data_parallel,
    gathered_clip_loss,
    gathered_pacl_loss,
    mean_across_processes,
    own_rows,
)
from utils.losses import clip_batch_loss
from utils.models import CLIP, CLIPConfig, clip_parameter_groups
from utils.pacl import PACL, pacl_batch_loss
from utils.positives import text_id_positives
from utils.sources.synthetic import generate_captioned_shapes
from utils.tokenization import build_tokenizer
from utils.train import TrainConfig, fit

WORLD = 2
LOCAL_BATCH = 4
GLOBAL_BATCH = WORLD * LOCAL_BATCH
EPOCHS = 2
SHORT_CAPTION = 3  # "two squares": fits many images, so the batches hold off-diagonal positives


# --------------------------------------------------------------------------------------------
# What both sides build the same way
# --------------------------------------------------------------------------------------------

def tiny_vit_clip(vocab_size: int) -> CLIP:
    # The tiny ViT has LayerNorms only: the tiny CNN's BatchNorm would normalise each process's
    # 4 images with their own statistics, a real difference from 8 images at once. Dropout is off
    # because each process would draw its own masks.
    torch.manual_seed(0)
    return CLIP(CLIPConfig(image_encoder="tiny_vit", image_size=32, embed_dim=16, dropout=0.0,
                           vocab_size=vocab_size, max_length=48))


def shapes_data(root: Path, tokenizer) -> tuple[ImageCaptionDataset, CaptionCollator]:
    files = locate_dataset(root)
    items = load_split(files, "train")
    dataset = ImageCaptionDataset(files.images_dir, items, build_transform(32, train=False),
                                  caption_index=SHORT_CAPTION)
    collator = CaptionCollator(tokenizer, max_length=48,
                               captions_of_images=[captions for _, captions in items])
    return dataset, collator


def train_config(checkpoint_dir: Path) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, checkpoint_dir=checkpoint_dir, progress=False, seed=3,
                       eval_every=0)


def clip_training(root: Path, tokenizer, checkpoint_dir: Path, distributed: bool,
                  resume: bool = False, record_batches: list | None = None):
    """Train the tiny CLIP; on 2 processes with DistributedSampler, alone on the global batches."""
    dataset, collator = shapes_data(root, tokenizer)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=5)
        loader = DataLoader(dataset, batch_size=LOCAL_BATCH, sampler=sampler, collate_fn=collator)
    else:
        loader = DataLoader(dataset, batch_sampler=GlobalBatches(dataset), collate_fn=collator)
    model = tiny_vit_clip(len(tokenizer))
    gathered = gathered_clip_loss(collator.captions_of_images)

    def loss_fn(model, batch):
        if record_batches is not None:
            record_batches.append(batch["image_index"].tolist())
        return gathered(model, batch) if distributed else clip_batch_loss(model, batch)

    # Some gradients are zero in exact arithmetic (attention's key biases: adding one number to
    # all of a query's logits leaves the softmax unchanged), so both runs hold float noise there.
    # AdamW with its default eps = 1e-8 divides that noise by its own size and takes full lr
    # steps in random directions. eps = 1e-3 keeps noise-sized gradients from moving weights;
    # it also makes the steps depend on the gradients' scale, so a wrongly scaled gradient shows.
    groups = [group | {"eps": 1e-3} for group in clip_parameter_groups(model, 1e-3, 1e-3)]
    history = fit(model, groups, loader, loss_fn, train_config(checkpoint_dir), resume=resume)
    return model, history


class GlobalBatches:
    """The batches of one process that sees, at each step, what all ``WORLD`` processes see.

    Step ``k`` is rank 0's ``k``-th batch of ``DistributedSampler`` followed by rank 1's, so
    the global batch keeps the rank order that the gathered loss uses.
    """

    def __init__(self, dataset):
        self.samplers = [DistributedSampler(dataset, num_replicas=WORLD, rank=r, shuffle=True,
                                            seed=5) for r in range(WORLD)]

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.samplers[0]) / LOCAL_BATCH)

    def __iter__(self):
        shards = [list(sampler) for sampler in self.samplers]
        for start in range(0, len(shards[0]), LOCAL_BATCH):
            yield [index for shard in shards for index in shard[start:start + LOCAL_BATCH]]


def pacl_batch(seed: int = 0) -> tuple[dict, list[set[int]]]:
    """A global PACL batch whose texts repeat (ids 0-2), so positives are off the diagonal too."""
    g = torch.Generator().manual_seed(seed)
    text_ids = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])
    image_text_ids = [{0, 5}, {1}, {2, 0}, {0}, {3}, {1, 2}, {4}, {2}]
    batch = {"patch_emb": torch.randn(GLOBAL_BATCH, 6, 16, generator=g),
             "text_emb": torch.randn(5, 16, generator=g)[text_ids],
             "text_ids": text_ids, "image_index": torch.arange(GLOBAL_BATCH)}
    batch["positives"] = text_id_positives(image_text_ids, text_ids)
    return batch, image_text_ids


def clip_batch_indices(dataset: ImageCaptionDataset) -> list[int]:
    """A global batch in which an image of each half shares its caption with one of the other."""
    first_with = {}
    for index, (_, captions) in enumerate(dataset.items):
        caption = captions[SHORT_CAPTION]
        if caption in first_with:
            pair = [first_with[caption], index]
            rest = [i for i in range(len(dataset)) if i not in pair][:GLOBAL_BATCH - 2]
            return [pair[0], *rest[:LOCAL_BATCH - 1], pair[1], *rest[LOCAL_BATCH - 1:]]
        first_with[caption] = index
    raise AssertionError("no two training images share a short caption; regenerate with more")


def local_part(batch: dict) -> dict:
    rows = own_rows(LOCAL_BATCH)
    return {k: v[rows] for k, v in batch.items() if k != "positives"} | (
        {"positives": batch["positives"][rows, rows]} if "positives" in batch else {})


TWO_CAPTIONS_SEED = 7   # both sides draw the same second captions


def two_caption_batch(dataset: ImageCaptionDataset, collator: CaptionCollator) -> dict:
    """The global batch of :func:`clip_batch_indices` with two captions per image."""
    collate = CaptionCollator(collator.tokenizer, collator.max_length,
                              captions_of_images=collator.captions_of_images, captions_per_image=2)
    torch.manual_seed(TWO_CAPTIONS_SEED)
    return collate([dataset[i] for i in clip_batch_indices(dataset)])


def local_two_caption_part(batch: dict) -> dict:
    """This process's images of a two-caption global batch and the texts they brought (each
    image's captions sit next to each other, in image order)."""
    rows = own_rows(LOCAL_BATCH)
    texts = slice(2 * rows.start, 2 * rows.stop)
    return {"images": batch["images"][rows], "image_index": batch["image_index"][rows],
            "input_ids": batch["input_ids"][texts],
            "attention_mask": batch["attention_mask"][texts], "captions": batch["captions"][texts],
            "caption_owner": batch["caption_owner"][texts] - rows.start}


def tiny_pacl() -> PACL:
    torch.manual_seed(1)
    return PACL(16, identity_init=False, softmax_temperature=0.5)


def loss_and_grads(model: torch.nn.Module, loss: torch.Tensor) -> dict:
    loss.backward()
    return {"loss": loss.detach(),
            "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}}


# --------------------------------------------------------------------------------------------
# The two processes
# --------------------------------------------------------------------------------------------

def worker(rank: int, port: int, folder: Path, tokenizer) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        torch.save(worker_losses(folder, tokenizer) | {
            "broadcast": broadcast_from_rank_0(f"from rank {rank}")},
            folder / f"losses_rank{rank}.pt")
        worker_training(rank, folder, tokenizer)
    finally:
        dist.destroy_process_group()


def worker_losses(folder: Path, tokenizer) -> dict:
    """Gathered CLIP and PACL losses of this process's half of the global batch, with DDP."""
    dataset, collator = shapes_data(folder / "shapes", tokenizer)
    clip = tiny_vit_clip(len(tokenizer))
    local = collator([dataset[i] for i in clip_batch_indices(dataset)[own_rows(LOCAL_BATCH)]])
    step = data_parallel(clip, gathered_clip_loss(collator.captions_of_images), torch.device("cpu"))
    clip_result = loss_and_grads(clip, step(local))

    clip = tiny_vit_clip(len(tokenizer))
    step = data_parallel(clip, gathered_clip_loss(collator.captions_of_images), torch.device("cpu"))
    two_captions_result = loss_and_grads(
        clip, step(local_two_caption_part(two_caption_batch(dataset, collator))))

    pacl = tiny_pacl()
    batch, image_text_ids = pacl_batch()
    step = data_parallel(pacl, gathered_pacl_loss(image_text_ids), torch.device("cpu"))
    pacl_result = loss_and_grads(pacl, step(local_part(batch)))

    # Without positives: the targets are the identity, offset by the rank.
    pacl = tiny_pacl()
    step = data_parallel(pacl, gathered_pacl_loss(), torch.device("cpu"))
    del batch["positives"]
    identity_result = loss_and_grads(pacl, step(local_part(batch)))
    results = {"clip": clip_result, "clip_two_captions": two_captions_result,
               "pacl": pacl_result, "pacl_identity": identity_result}
    for result in results.values():
        result["loss"] = mean_across_processes(result["loss"])
    return results


def worker_training(rank: int, folder: Path, tokenizer) -> None:
    writers = []
    original_save = utils.train.save_checkpoint

    def recording_save(*args, **kwargs):
        writers.append(rank)
        return original_save(*args, **kwargs)

    utils.train.save_checkpoint = recording_save
    seen: list = []
    model, history = clip_training(folder / "shapes", tokenizer, folder / "two", True,
                                   record_batches=seen)
    resumed, _ = clip_training(folder / "shapes", tokenizer, folder / "one_then_two", True,
                               resume=True)
    torch.save({"weights": model.state_dict(), "resumed": resumed.state_dict(),
                "losses": [s["loss"] for s in history.steps], "batches": seen,
                "writers": writers}, folder / f"training_rank{rank}.pt")


# --------------------------------------------------------------------------------------------
# The fixture: references, then the spawn
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_first_epoch(source: Path, target: Path) -> None:
    """A checkpoint folder as a run interrupted after epoch 1 would have left it."""
    target.mkdir()
    shutil.copytree(source / "epoch_0001", target / "epoch_0001")
    (target / "LATEST").write_text("epoch_0001")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    root = generate_captioned_shapes(folder / "shapes", num_train=24, num_dev=2, num_test=2,
                                     image_size=32, progress=False)
    items = load_split(locate_dataset(root), "train")
    tokenizer = build_tokenizer("wordpiece", [c for _, captions in items for c in captions],
                                vocab_size=120)

    single, single_history = clip_training(root, tokenizer, folder / "one", distributed=False)
    copy_first_epoch(folder / "one", folder / "one_then_two")

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # two processes share the machine's cores
    mp.spawn(worker, args=(free_port(), folder, tokenizer), nprocs=WORLD, join=True)
    return {"folder": folder, "root": root, "tokenizer": tokenizer, "single": single,
            "single_losses": [s["loss"] for s in single_history.steps],
            "losses": [torch.load(folder / f"losses_rank{r}.pt") for r in range(WORLD)],
            "training": [torch.load(folder / f"training_rank{r}.pt") for r in range(WORLD)]}


def assert_same_tensors(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m, n=name: f"{n}: {m}", **tolerance)


# --------------------------------------------------------------------------------------------
# The gathered losses
# --------------------------------------------------------------------------------------------

def global_clip_batch(runs) -> tuple[dict, CaptionCollator]:
    dataset, collator = shapes_data(runs["root"], runs["tokenizer"])
    return collator([dataset[i] for i in clip_batch_indices(dataset)]), collator


def test_clip_loss_and_every_gradient_equal_the_single_process_ones(runs):
    batch, _ = global_clip_batch(runs)
    # Positives that cross the two processes' halves: only gathered positives get these right.
    cross = batch["positives"][:LOCAL_BATCH, LOCAL_BATCH:]
    assert cross.any() and not batch["positives"].all()
    clip = tiny_vit_clip(len(runs["tokenizer"]))
    expected = loss_and_grads(clip, clip_batch_loss(clip, batch))
    for result in runs["losses"]:
        torch.testing.assert_close(result["clip"]["loss"], expected["loss"])
        assert_same_tensors(result["clip"]["grads"], expected["grads"])


def test_with_two_captions_per_image_too(runs):
    dataset, collator = shapes_data(runs["root"], runs["tokenizer"])
    batch = two_caption_batch(dataset, collator)
    # Two texts per image, and positives across the halves: the image embeddings are repeated
    # per caption on each process, and the gathered positives see the other half's texts.
    assert len(batch["captions"]) == 2 * GLOBAL_BATCH
    assert batch["positives"][:2 * LOCAL_BATCH, 2 * LOCAL_BATCH:].any()
    clip = tiny_vit_clip(len(runs["tokenizer"]))
    expected = loss_and_grads(clip, clip_batch_loss(clip, batch))
    for result in runs["losses"]:
        torch.testing.assert_close(result["clip_two_captions"]["loss"], expected["loss"])
        assert_same_tensors(result["clip_two_captions"]["grads"], expected["grads"])


@pytest.mark.parametrize("with_positives", [True, False])
def test_pacl_loss_and_every_gradient_equal_the_single_process_ones(runs, with_positives):
    batch, _ = pacl_batch()
    assert batch["positives"][:LOCAL_BATCH, LOCAL_BATCH:].any()
    if not with_positives:
        del batch["positives"]
    pacl = tiny_pacl()
    expected = loss_and_grads(pacl, pacl_batch_loss(pacl, batch))
    assert expected["grads"].keys() == {n for n, _ in pacl.named_parameters()}
    key = "pacl" if with_positives else "pacl_identity"
    for result in runs["losses"]:
        torch.testing.assert_close(result[key]["loss"], expected["loss"])
        assert_same_tensors(result[key]["grads"], expected["grads"])


def test_what_rank_0_broadcasts_reaches_every_process(runs):
    assert [result["broadcast"] for result in runs["losses"]] == ["from rank 0"] * WORLD


def test_alone_the_gathered_losses_are_the_plain_ones(runs):
    dataset, collator = shapes_data(runs["root"], runs["tokenizer"])
    clip = tiny_vit_clip(len(runs["tokenizer"]))
    for captions_per_image in (1, 2):   # 2: image embeddings repeated once per caption
        collate = CaptionCollator(collator.tokenizer, collator.max_length,
                                  captions_of_images=collator.captions_of_images,
                                  captions_per_image=captions_per_image)
        batch = collate([dataset[i] for i in clip_batch_indices(dataset)])
        torch.testing.assert_close(gathered_clip_loss(collator.captions_of_images)(clip, batch),
                                   clip_batch_loss(clip, batch))
    batch, image_text_ids = pacl_batch(seed=1)
    pacl = tiny_pacl()
    torch.testing.assert_close(gathered_pacl_loss(image_text_ids)(pacl, batch),
                               pacl_batch_loss(pacl, batch))


def test_a_batch_with_positives_needs_their_rule(runs):
    batch, _ = global_clip_batch(runs)
    with pytest.raises(ValueError, match="captions_of_images"):
        gathered_clip_loss()(tiny_vit_clip(len(runs["tokenizer"])), batch)


# --------------------------------------------------------------------------------------------
# Training, sharding, checkpoints
# --------------------------------------------------------------------------------------------

def test_two_processes_end_with_the_single_process_weights(runs):
    single = runs["single"].state_dict()
    rank0, rank1 = (r["weights"] for r in runs["training"])
    assert_same_tensors(rank0, rank1, rtol=0, atol=0)      # DDP keeps the copies identical
    assert_same_tensors(rank0, single)
    moved = [n for n, w in single.items() if not torch.equal(w, tiny_vit_clip(120).state_dict()[n])]
    assert len(moved) > 10                                   # it did train


def test_history_logs_the_loss_of_the_global_batch(runs):
    assert len(runs["single_losses"]) == EPOCHS * 3
    for result in runs["training"]:
        torch.testing.assert_close(torch.tensor(result["losses"]),
                                   torch.tensor(runs["single_losses"]))


def test_each_process_gets_its_own_shard_reshuffled_every_epoch(runs):
    steps = len(runs["single_losses"]) // EPOCHS
    shards = [[sum(r["batches"][e * steps:(e + 1) * steps], []) for e in range(EPOCHS)]
              for r in runs["training"]]
    for epoch in range(EPOCHS):
        assert sorted(shards[0][epoch] + shards[1][epoch]) == list(range(24))
    assert shards[0][0] != shards[0][1]


def test_only_rank_0_writes_checkpoints(runs):
    # Two epochs of the fresh run, one of the resumed run.
    assert [r["writers"] for r in runs["training"]] == [[0, 0, 0], []]
    saved = load_file(runs["folder"] / "two" / "epoch_0002" / "model.safetensors")
    assert_same_tensors(saved, runs["training"][0]["weights"], rtol=0, atol=0)
    assert json.loads((runs["folder"] / "two" / "epoch_0002" / "history.json").read_text())


def test_a_checkpoint_of_one_process_resumes_on_two(runs):
    assert_same_tensors(runs["training"][0]["resumed"], runs["single"].state_dict())


def test_a_checkpoint_of_two_processes_resumes_on_one(runs):
    folder = runs["folder"]
    copy_first_epoch(folder / "two", folder / "two_then_one")
    resumed, _ = clip_training(runs["root"], runs["tokenizer"], folder / "two_then_one",
                               distributed=False, resume=True)
    assert_same_tensors(resumed.state_dict(), runs["training"][0]["weights"])
