"""Encoders, heads and CLIP: shapes, the temperature, and the real (Colab) architectures."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel

from utils.models import CLIP, CLIPConfig, ImageEncoder, ProjectionHead, TextEncoder


@pytest.fixture(scope="module")
def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(CLIPConfig(vocab_size=50, image_size=32, embed_dim=16)).eval()


def tokens(batch: int = 3, length: int = 7, vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # a padded caption
    return ids, mask


def test_clip_embeddings_are_unit_length(tiny_clip):
    ids, mask = tokens()
    image_emb, text_emb, scale = tiny_clip(torch.randn(3, 3, 32, 32), ids, mask)
    assert image_emb.shape == text_emb.shape == (3, 16)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_clamped_at_100_and_trainable(tiny_clip):
    clip = CLIP(CLIPConfig(vocab_size=50, image_size=32, embed_dim=16))
    with torch.no_grad():
        clip.log_logit_scale.fill_(math.log(1e4))
    assert clip.logit_scale.item() == pytest.approx(100.0)
    assert clip.log_logit_scale.requires_grad
    assert any(p is clip.log_logit_scale for p in clip.head_parameters())


def test_patch_embeddings_share_the_image_head(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    patches = tiny_clip.encode_patches(images)
    assert patches.shape == (2, (32 // 4) ** 2, 16)  # tiny CNN: stride 4
    # The pooled image embedding is the head applied to the mean of the patch features.
    features = tiny_clip.image_encoder.patch_tokens(images)
    pooled = tiny_clip.image_projection(features.mean(1))
    torch.testing.assert_close(tiny_clip.encode_image(images, normalize=False), pooled)


def test_padding_does_not_change_text_embedding(tiny_clip):
    ids, mask = tokens(batch=1, length=5)
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(
        tiny_clip.encode_text(ids, mask),
        tiny_clip.encode_text(padded_ids, padded_mask),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("kind,size,patches", [("tiny_cnn", 64, 256), ("tiny_vit", 64, 64)])
def test_tiny_image_encoders(kind, size, patches):
    encoder = ImageEncoder(kind, image_size=size)
    pooled, tokens_ = encoder.tokens(torch.randn(2, 3, size, size))
    assert pooled.shape == (2, encoder.out_dim)
    assert tokens_.shape == (2, patches, encoder.out_dim)


def test_real_resnet50_architecture_random_weights():
    encoder = ImageEncoder("resnet50", pretrained=False).eval()
    assert encoder.out_dim == 2048
    with torch.no_grad():
        pooled, patches = encoder.tokens(torch.randn(1, 3, 224, 224))
    assert pooled.shape == (1, 2048) and patches.shape == (1, 49, 2048)


def test_real_vit_b_16_architecture_random_weights():
    encoder = ImageEncoder("vit_b_16", pretrained=False, image_size=224).eval()
    with torch.no_grad():
        pooled, patches = encoder.tokens(torch.randn(1, 3, 224, 224))
    assert pooled.shape == (1, 768) and patches.shape == (1, 196, 768)


def test_real_distilbert_architecture_loads_from_a_local_folder(tmp_path):
    # The Colab path calls DistilBertModel.from_pretrained; here it reads a folder in the hub's
    # layout (config.json + model.safetensors) written from a random model of the real config.
    reference = DistilBertModel(DistilBertConfig(vocab_size=120)).eval()
    reference.save_pretrained(tmp_path)
    encoder = TextEncoder("distilbert", pretrained=True, pretrained_name=str(tmp_path)).eval()
    assert encoder.out_dim == 768
    ids, mask = tokens(batch=2, length=6, vocab=120)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder(ids, mask), expected)


def test_projection_head_on_any_leading_shape():
    head = ProjectionHead(8, 4).eval()
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(head(x)[1, 3], head(x[1, 3]))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown image encoder"):
        ImageEncoder("resnet18")
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder("tiny_distilbert")
    with pytest.raises(ValueError, match="pretrained"):
        TextEncoder("tiny_distilbert", pretrained=True)


def test_save_and_load_clip_round_trip(tmp_path):
    from utils.models import load_clip, save_clip
    from utils.tokenization import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(["a red circle", "a blue square above a star"] * 5,
                                          vocab_size=60)
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(vocab_size=len(tokenizer), image_size=32, embed_dim=16)).eval()
    save_clip(tmp_path / "clip", model, tokenizer)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    loaded, loaded_tokenizer = load_clip(tmp_path / "clip")
    text = loaded_tokenizer(["a red star"], return_tensors="pt")
    assert text["input_ids"].tolist() == tokenizer(["a red star"], return_tensors="pt")[
        "input_ids"].tolist()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))
    torch.testing.assert_close(loaded.encode_text(text["input_ids"], text["attention_mask"]),
                               model.encode_text(text["input_ids"], text["attention_mask"]))
    with pytest.raises(FileNotFoundError, match="train and save a CLIP first"):
        load_clip(tmp_path / "missing")
