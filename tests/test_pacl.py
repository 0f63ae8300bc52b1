"""Tests for utils.pacl (the compatibility of PACL Eq. 2-3, the loss, the embedder), utils.backbones
(course CLIP and a tiny random Hugging Face CLIP) and utils.feature_cache (and training from it)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from utils.backbones import CourseCLIPBackbone, HFCLIPBackbone, load_hf_clip
from utils.data import load_image, load_split, locate_dataset
from utils.feature_cache import (
    FeatureCache,
    PACLFeatureDataset,
    cache_features,
    pacl_feature_loader,
)
from utils.losses import clip_loss
from utils.models import CLIP, CLIPConfig
from utils.pacl import (
    PACL,
    VisionEmbedder,
    pacl_batch_loss,
    pacl_compatibility,
    pacl_loss,
    pacl_parameter_groups,
    patch_text_similarity,
)
from utils.prompts import synthetic_object_words, training_texts
from utils.synthetic import generate_captioned_shapes
from utils.tokenization import train_wordpiece_tokenizer
from utils.train import TrainConfig, fit

IMAGE_SIZE = 32
EMBED_DIM = 16


def random_inputs(batch=3, texts=4, patches=5, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, patches, dim, generator=generator, dtype=torch.float64),
            torch.randn(texts, dim, generator=generator, dtype=torch.float64))


def compatibility_by_loops(patch_emb, text_emb, temperature=None):
    """PACL Eq. 2-3 written out one image, one text and one patch at a time."""
    result = torch.zeros(len(patch_emb), len(text_emb), dtype=patch_emb.dtype)
    for b, patches in enumerate(patch_emb):
        for t, text in enumerate(text_emb):
            scores = torch.stack([F.cosine_similarity(patch, text, dim=0) for patch in patches])
            weights = torch.softmax(scores / (temperature or 1.0), dim=0)
            pooled = sum(weight * patch for weight, patch in zip(weights, patches, strict=True))
            result[b, t] = F.cosine_similarity(pooled, text, dim=0)
    return result


# --------------------------------------------------------------------------------------------
# Compatibility and loss
# --------------------------------------------------------------------------------------------

def test_compatibility_equals_the_direct_loop():
    patch_emb, text_emb = random_inputs()
    result = pacl_compatibility(patch_emb, text_emb)
    assert result.shape == (3, 4)
    torch.testing.assert_close(result, compatibility_by_loops(patch_emb, text_emb))


def test_temperature_option_matches_the_loop_and_sharpens_towards_the_best_patch():
    patch_emb, text_emb = random_inputs(seed=1)
    torch.testing.assert_close(pacl_compatibility(patch_emb, text_emb, temperature=0.1),
                               compatibility_by_loops(patch_emb, text_emb, temperature=0.1))
    assert not torch.allclose(pacl_compatibility(patch_emb, text_emb, temperature=0.1),
                              pacl_compatibility(patch_emb, text_emb))
    # A tiny temperature puts all the weight on the most similar patch.
    best_patch_cosine = patch_text_similarity(patch_emb, text_emb).amax(dim=-1)
    torch.testing.assert_close(pacl_compatibility(patch_emb, text_emb, temperature=1e-6),
                               best_patch_cosine)
    with pytest.raises(ValueError, match="temperature"):
        pacl_compatibility(patch_emb, text_emb, temperature=0.0)


def test_compatibility_invariances():
    patch_emb, text_emb = random_inputs(seed=2)
    reference = pacl_compatibility(patch_emb, text_emb)
    permuted = patch_emb[:, torch.randperm(patch_emb.shape[1])]
    torch.testing.assert_close(pacl_compatibility(permuted, text_emb), reference)
    torch.testing.assert_close(pacl_compatibility(3.7 * patch_emb, text_emb), reference)
    text_scales = torch.tensor([0.2, 1.0, 5.0, 40.0], dtype=torch.float64)[:, None]
    torch.testing.assert_close(pacl_compatibility(patch_emb, text_scales * text_emb), reference)


def test_compatibility_does_not_renormalise_patches():
    # Scaling one patch changes its weight in the sum (the sum uses the embeddings as they are)
    # though not its cosine with the text: the result must change.
    patch_emb, text_emb = random_inputs(seed=3)
    scaled = patch_emb.clone()
    scaled[:, 0] *= 10
    assert not torch.allclose(pacl_compatibility(scaled, text_emb),
                              pacl_compatibility(patch_emb, text_emb))
    torch.testing.assert_close(pacl_compatibility(scaled, text_emb),
                               compatibility_by_loops(scaled, text_emb))


def test_identical_patches_reduce_to_the_plain_cosine():
    patch_emb, text_emb = random_inputs(seed=4)
    same = patch_emb[:, :1].expand(-1, 7, -1)
    expected = F.normalize(patch_emb[:, 0], dim=-1) @ F.normalize(text_emb, dim=-1).T
    torch.testing.assert_close(pacl_compatibility(same, text_emb), expected)


def test_patch_text_similarity_is_the_cosine_of_each_patch():
    patch_emb, text_emb = random_inputs(seed=5)
    similarity = patch_text_similarity(patch_emb, text_emb)
    assert similarity.shape == (3, 4, 5)
    torch.testing.assert_close(
        similarity[2, 1, 3], F.cosine_similarity(patch_emb[2, 3], text_emb[1], dim=0))


@pytest.mark.parametrize("patch_shape, text_shape", [((5, 6), (4, 6)), ((3, 5, 6), (4, 7)),
                                                     ((3, 5, 6), (6,))])
def test_wrong_shapes_are_refused(patch_shape, text_shape):
    with pytest.raises(ValueError, match=r"\[B, P, D\]"):
        pacl_compatibility(torch.randn(patch_shape), torch.randn(text_shape))


def test_pacl_loss_with_one_patch_equals_the_clip_loss():
    generator = torch.Generator().manual_seed(6)
    patch_emb = torch.randn(8, 1, 16, generator=generator)
    text_emb = torch.randn(8, 16, generator=generator)
    positives = torch.eye(8, dtype=torch.bool)
    positives[0, 3] = positives[3, 0] = True
    for pos in (None, positives):
        torch.testing.assert_close(pacl_loss(patch_emb, text_emb, 14.3, pos),
                                   clip_loss(patch_emb[:, 0], text_emb, 14.3, pos))
    with pytest.raises(ValueError, match="pairs image i with text i"):
        pacl_loss(patch_emb, text_emb[:5], 14.3)


# --------------------------------------------------------------------------------------------
# The trainable part
# --------------------------------------------------------------------------------------------

def test_vision_embedder_is_a_residual_block_of_about_a_million_parameters():
    embedder = VisionEmbedder(768, 512)
    assert 0.9e6 < sum(p.numel() for p in embedder.parameters()) < 1.2e6
    x = torch.randn(2, 5, 768)
    assert embedder(x).shape == (2, 5, 512)
    torch.testing.assert_close(embedder(x), embedder.linear(x) + embedder.residual(x))
    with pytest.raises(ValueError, match="identity_init"):
        VisionEmbedder(768, 512, identity_init=True)


def test_pacl_starts_as_the_identity_and_then_equals_clip_on_single_patches():
    pacl = PACL(EMBED_DIM)
    x = torch.randn(4, 9, EMBED_DIM)
    torch.testing.assert_close(pacl.embed_patches(x), x)
    assert pacl.text_embedder is None
    assert pacl.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    batch = {"patch_emb": torch.randn(6, 1, EMBED_DIM).half(), "text_emb": torch.randn(6, EMBED_DIM)}
    torch.testing.assert_close(
        pacl_batch_loss(pacl, batch),
        clip_loss(batch["patch_emb"][:, 0].float(), batch["text_emb"], pacl.logit_scale))


def test_logit_scale_is_clamped_at_100():
    pacl = PACL(EMBED_DIM)
    with torch.no_grad():
        pacl.log_logit_scale.fill_(math.log(1e4))
    assert pacl.logit_scale.item() == pytest.approx(100.0)


def test_optional_text_embedder_and_parameter_groups():
    plain, with_text = PACL(EMBED_DIM), PACL(EMBED_DIM, text_embedder=True, identity_init=False)
    assert (sum(p.numel() for p in with_text.parameters())
            > sum(p.numel() for p in plain.parameters()))
    texts = torch.randn(3, EMBED_DIM)
    torch.testing.assert_close(plain.embed_texts(texts), texts)
    assert not torch.allclose(with_text.embed_texts(texts), texts)
    groups = pacl_parameter_groups(with_text, lr=1e-3)
    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len(list(with_text.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in with_text.parameters()}
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)["params"]
    assert any(p is with_text.log_logit_scale for p in no_decay)


# --------------------------------------------------------------------------------------------
# Frozen backbones
# --------------------------------------------------------------------------------------------

CAPTIONS = ["a red circle", "a photo of a blue star", "two squares and a green cross",
            "something yellow", "a large purple triangle on the left"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(CAPTIONS, vocab_size=80)


def course_clip(tokenizer, seed=0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(vocab_size=len(tokenizer), image_size=IMAGE_SIZE, embed_dim=EMBED_DIM))


def tiny_hf_clip(tokenizer, seed=0) -> CLIPModel:
    torch.manual_seed(seed)
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                   eos_token_id=tokenizer.sep_token_id)
    config = HFCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=EMBED_DIM)
    return CLIPModel(config)


def test_hf_backbone_patch_embeddings_are_layer_normed_projected_patch_tokens(tokenizer):
    model = tiny_hf_clip(tokenizer)
    backbone = HFCLIPBackbone(model, tokenizer)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    patches = backbone.patch_embeddings(images)
    assert patches.shape == (2, 16, EMBED_DIM)
    assert backbone.grid_shape(IMAGE_SIZE) == (4, 4)
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=images).last_hidden_state      # [B, 1 + P, C]
        by_hand = model.visual_projection(model.vision_model.post_layernorm(hidden))
        pooled = model.get_image_features(pixel_values=images)
    torch.testing.assert_close(patches, by_hand[:, 1:])
    # The class token through the same two layers is CLIP's own image embedding.
    pooled = pooled if torch.is_tensor(pooled) else pooled.pooler_output
    torch.testing.assert_close(by_hand[:, 0], pooled)
    torch.testing.assert_close(backbone.image_embeddings(images), F.normalize(pooled, dim=-1))


def test_hf_backbone_takes_other_sizes_and_embeds_texts(tokenizer):
    backbone = HFCLIPBackbone(tiny_hf_clip(tokenizer), tokenizer)
    assert backbone.patch_embeddings(torch.randn(1, 3, 48, 48)).shape == (1, 36, EMBED_DIM)
    assert backbone.grid_shape(48) == (6, 6)
    texts = backbone.text_embeddings(CAPTIONS[:3])
    assert texts.shape == (3, EMBED_DIM)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(texts[0], texts[1])


def test_load_hf_clip_reads_a_saved_model(tokenizer, tmp_path):
    model = tiny_hf_clip(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_hf_clip(str(tmp_path))
    images = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(loaded.patch_embeddings(images),
                               HFCLIPBackbone(model, tokenizer).patch_embeddings(images))
    assert loaded.cache_key == HFCLIPBackbone(model, tokenizer).cache_key
    with pytest.raises(OSError, match="course's own CLIP"):
        load_hf_clip(str(tmp_path / "missing"))


def test_course_backbone_shapes_and_freezing(tokenizer):
    model = course_clip(tokenizer).train()
    backbone = CourseCLIPBackbone(model, tokenizer)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    patches = backbone.patch_embeddings(images)
    height, width = backbone.grid_shape(IMAGE_SIZE)
    assert patches.shape == (2, height * width, EMBED_DIM) and (height, width) == (8, 8)
    torch.testing.assert_close(patches, model.encode_patches(images, normalize=False))
    assert backbone.image_embeddings(images).shape == (2, EMBED_DIM)
    assert backbone.text_embeddings(CAPTIONS).shape == (5, EMBED_DIM)
    with pytest.raises(ValueError, match="list of strings"):
        backbone.text_embeddings("a red circle")


def test_gradients_reach_the_embedder_and_nothing_frozen(tokenizer):
    model = course_clip(tokenizer)
    backbone = CourseCLIPBackbone(model, tokenizer)
    pacl = PACL(EMBED_DIM, identity_init=False)
    patches = backbone.patch_embeddings(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    texts = backbone.text_embeddings(CAPTIONS[:4])
    assert not patches.requires_grad and not texts.requires_grad
    loss = pacl_batch_loss(pacl, {"patch_emb": patches, "text_emb": texts})
    loss.backward()
    for name, param in pacl.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_cache_key_follows_the_weights(tokenizer):
    model = course_clip(tokenizer)
    key = CourseCLIPBackbone(model, tokenizer).cache_key
    assert CourseCLIPBackbone(copy.deepcopy(model), tokenizer).cache_key == key
    assert CourseCLIPBackbone(course_clip(tokenizer, seed=1), tokenizer).cache_key != key
    hf = tiny_hf_clip(tokenizer)
    hf_key = HFCLIPBackbone(hf, tokenizer).cache_key
    with torch.no_grad():
        hf.visual_projection.weight[0, 0] += 1e-3
    assert HFCLIPBackbone(hf, tokenizer).cache_key != hf_key


# --------------------------------------------------------------------------------------------
# Feature cache and training from it
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 16-image synthetic set and its PACL training items (captions + object prompts)."""
    root = generate_captioned_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=16,
                                     num_dev=0, num_test=0, image_size=IMAGE_SIZE, progress=False)
    files = locate_dataset(root)
    objects = json.loads((root / "objects.json").read_text())
    items = [(name, training_texts(captions, synthetic_object_words(objects, name),
                                   rng=np.random.default_rng(i)))
             for i, (name, captions) in enumerate(load_split(files, "train"))]
    return files.images_dir, items


def build(backbone, shapes, cache_dir, dataset_key="shapes-train"):
    images_dir, items = shapes
    return cache_features(backbone, images_dir, items, IMAGE_SIZE, cache_dir, dataset_key,
                          batch_size=6, progress=False)


def cache_folders(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def test_cache_holds_the_backbones_features(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    cache = build(backbone, shapes, tmp_path)
    images_dir, items = shapes
    assert cache.image_names == [name for name, _ in items]
    assert cache.patch_emb.shape == (16, 64, EMBED_DIM) and cache.patch_emb.dtype == np.float16
    assert cache.grid_shape == (8, 8)
    assert len(cache.texts) == len(set(cache.texts))
    for (_, texts), ids in zip(items, cache.image_text_ids, strict=True):
        assert [cache.texts[i] for i in ids] == texts
    transform = backbone.image_transform(IMAGE_SIZE)
    first = transform(image=load_image(images_dir / items[0][0]))["image"][None]
    torch.testing.assert_close(torch.from_numpy(np.array(cache.patch_emb[0])).float(),
                               backbone.patch_embeddings(first)[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.from_numpy(np.array(cache.text_emb[:5])).float(),
                               backbone.text_embeddings(cache.texts[:5]), atol=2e-3, rtol=2e-3)


def test_cache_is_reused_and_invalidated(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    first = build(backbone, shapes, tmp_path)
    mtime = (first.folder / "patch_emb.npy").stat().st_mtime_ns
    again = build(CourseCLIPBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    assert again.folder == first.folder
    assert (again.folder / "patch_emb.npy").stat().st_mtime_ns == mtime
    assert cache_folders(tmp_path) == [first.folder.name]  # no temporary files left

    other_weights = build(CourseCLIPBackbone(course_clip(tokenizer, seed=1), tokenizer), shapes,
                          tmp_path)
    other_dataset = build(backbone, shapes, tmp_path, dataset_key="shapes-other")
    images_dir, items = shapes
    other_texts = cache_features(backbone, images_dir, items[:-1], IMAGE_SIZE, tmp_path,
                                 "shapes-train", progress=False)
    folders = {first.folder, other_weights.folder, other_dataset.folder, other_texts.folder}
    assert len(folders) == 4
    assert not np.array_equal(other_weights.patch_emb, first.patch_emb)
    assert cache_folders(tmp_path) == sorted(f.name for f in folders)


def test_a_damaged_cache_is_rebuilt(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    cache = build(backbone, shapes, tmp_path)
    (cache.folder / "text_emb.npy").unlink()
    rebuilt = build(backbone, shapes, tmp_path)
    assert rebuilt.folder == cache.folder
    np.testing.assert_array_equal(rebuilt.text_emb, cache.text_emb)


class FailingTextBackbone(CourseCLIPBackbone):
    """Fails half-way through a cache build, after the patches were written."""

    def text_embeddings(self, texts):
        raise RuntimeError("interrupted")


def test_an_interrupted_build_leaves_nothing(tokenizer, shapes, tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        build(FailingTextBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    assert cache_folders(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="not a PACL feature cache"):
        FeatureCache.load(tmp_path)


def test_bad_items_are_refused(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    images_dir, _ = shapes
    with pytest.raises(ValueError, match="training_texts"):
        cache_features(backbone, images_dir, [("000000.png", "a red circle")], IMAGE_SIZE,
                       tmp_path, "shapes", progress=False)
    with pytest.raises(ValueError, match="dataset_key"):
        cache_features(backbone, images_dir, [("000000.png", ["a circle"])], IMAGE_SIZE,
                       tmp_path, "", progress=False)


def test_batches_pair_patches_with_texts_and_mark_every_match(tokenizer, shapes, tmp_path):
    cache = build(CourseCLIPBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    _, items = shapes
    torch.manual_seed(0)
    batch = next(iter(pacl_feature_loader(cache, batch_size=8)))
    assert batch["patch_emb"].shape == (8, 64, EMBED_DIM)
    assert batch["text_emb"].shape == (8, EMBED_DIM)
    images, text_ids = batch["image_index"].tolist(), batch["text_ids"].tolist()
    for row, image in enumerate(images):
        np.testing.assert_array_equal(batch["patch_emb"][row].numpy(), cache.patch_emb[image])
        for column, text_id in enumerate(text_ids):
            # Word for word: the text of column j is one of image i's texts.
            assert batch["positives"][row, column] == (cache.texts[text_id] in items[image][1])
    assert batch["positives"].diagonal().all()
    assert batch["positives"].sum() > 8  # shared prompts such as "a circle." fit several images
    item = PACLFeatureDataset(cache)[-1]
    assert item["image_index"] == 15 and item["text_id"] in cache.image_text_ids[15]
    with pytest.raises(ValueError, match="lower it"):
        pacl_feature_loader(cache, batch_size=17)


def random_cache(folder: Path, num_images=16, patches=9, dim=EMBED_DIM) -> FeatureCache:
    """A cache of random features: image i has its own text i and shares text "a shape." with
    every image (a random CLIP's texts are all alike, so its features would teach nothing)."""
    generator = torch.Generator().manual_seed(0)
    patch_emb = torch.randn(num_images, patches, dim, generator=generator)
    text_emb = F.normalize(torch.randn(num_images + 1, dim, generator=generator), dim=-1)
    return FeatureCache(folder, [f"{i}.png" for i in range(num_images)],
                        [f"text {i}" for i in range(num_images)] + ["a shape."],
                        [[i, num_images] for i in range(num_images)],
                        patch_emb.half().numpy(), text_emb.half().numpy(), (3, 3), key={})


def test_training_from_the_cache_lowers_the_loss(tmp_path):
    cache = random_cache(tmp_path)
    torch.manual_seed(0)
    pacl = PACL(EMBED_DIM)
    loader = pacl_feature_loader(cache, batch_size=8)
    fixed_batches = list(loader)

    def mean_loss() -> float:
        with torch.no_grad():
            return float(np.mean([pacl_batch_loss(pacl, b).item() for b in fixed_batches]))

    before = mean_loss()
    history = fit(pacl, pacl_parameter_groups(pacl, lr=1e-2), loader, pacl_batch_loss,
                  TrainConfig(epochs=15, progress=False, eval_every=0, device="cpu"))
    assert len(history.steps) == 30
    assert mean_loss() < 0.7 * before
