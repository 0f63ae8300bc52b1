"""Tests for utils.backbones: the course's CLIP and a tiny random Hugging Face CLIP as frozen PACL
backbones (patch, image and text embeddings; freezing; cache keys)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_clips import (
    CAPTIONS,
    EMBED_DIM,
    IMAGE_SIZE,
    course_clip,
    tiny_hf_clip,
)

from utils.backbones import CourseCLIPBackbone, HFCLIPBackbone, load_hf_clip


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

