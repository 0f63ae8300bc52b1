"""Encoders, heads and CLIP: shapes, the temperature, and the real (Colab) architectures."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel

from utils.models import (
    CLIP,
    AttentionPool,
    CLIPConfig,
    ImageEncoder,
    ProjectionHead,
    TextEncoder,
)


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
    patches = tiny_clip.encode_patches(images, normalize=False)
    assert patches.shape == (2, (32 // 4) ** 2, 16)  # tiny CNN: stride 4
    # Patch tokens and the pooled feature go through the same projection head.
    _, features = tiny_clip.image_encoder.tokens(images)
    torch.testing.assert_close(patches, tiny_clip.image_projection(features))


def test_average_pooling_is_the_mean_of_the_patch_tokens():
    torch.manual_seed(0)
    encoder = ImageEncoder("tiny_cnn", image_size=32, attention_pool=False).eval()
    pooled, patches = encoder.tokens(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(pooled, patches.mean(1))


def test_attention_pool_matches_torch_multihead_attention():
    # Independent reference: nn.MultiheadAttention with the same weights, the mean token as the
    # query and the position-embedded cells as keys and values.
    torch.manual_seed(0)
    channels, heads = 64, 2
    pool = AttentionPool(channels, (4, 4), num_heads=heads).eval()
    reference = torch.nn.MultiheadAttention(channels, heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([pool.query.weight, pool.key.weight,
                                                  pool.value.weight]))
        reference.in_proj_bias.copy_(torch.cat([pool.query.bias, pool.key.bias, pool.value.bias]))
        reference.out_proj.weight.copy_(pool.out.weight)
        reference.out_proj.bias.copy_(pool.out.bias)
    feature_map = torch.randn(3, channels, 4, 4)
    tokens_ = (feature_map + pool.position).flatten(2).transpose(1, 2)
    expected, _ = reference(tokens_.mean(1, keepdim=True), tokens_, tokens_)
    pooled, patches = pool(feature_map)
    torch.testing.assert_close(pooled, expected[:, 0], atol=1e-5, rtol=1e-5)
    # The patch tokens are each cell's value through the output projection.
    torch.testing.assert_close(patches, pool.out(pool.value(tokens_)))


def test_attention_pool_one_head_is_a_convex_combination_of_patches():
    torch.manual_seed(0)
    pool = AttentionPool(8, (3, 3), num_heads=1)
    pooled, patches = pool(torch.randn(2, 8, 3, 3))
    # Solve pooled = sum_i a_i patch_i, sum_i a_i = 1 for a (9 equations, 9 unknowns): the
    # solution is the attention weights, so it must be non-negative.
    for b in range(2):
        solution = torch.linalg.lstsq(torch.cat([patches[b].T, torch.ones(1, 9)]),
                                      torch.cat([pooled[b], torch.ones(1)])[:, None]).solution
        assert solution.min() > -1e-4


def test_attention_pool_knows_where_things_are():
    # Average pooling cannot tell a feature map from its mirror image; attention pooling can,
    # which is what "a circle on the left" needs.
    torch.manual_seed(0)
    pool = AttentionPool(16, (4, 4))
    feature_map = torch.randn(1, 16, 4, 4)
    mirrored = feature_map.flip(-1)
    assert torch.allclose(feature_map.mean((2, 3)), mirrored.mean((2, 3)), atol=1e-6)
    assert not torch.allclose(pool(feature_map)[0], pool(mirrored)[0], atol=1e-3)


def test_attention_pool_accepts_other_grid_sizes():
    pool = AttentionPool(16, (4, 4))
    pooled, patches = pool(torch.randn(2, 16, 6, 5))
    assert pooled.shape == (2, 16) and patches.shape == (2, 30, 16)


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


@pytest.mark.parametrize("buckets", [1, 2, 3, 5, 40])
def test_length_buckets_give_the_same_states_and_gradients(buckets):
    """Encoding in groups of similar length is only a saving: the [CLS] states and gradients of
    one plain pass over the padded batch, in the batch's order, for any number of groups (more
    groups than captions included)."""
    ids = torch.randint(5, 50, (12, 20))
    mask = torch.zeros_like(ids)
    for row, length in enumerate([20, 3, 11, 7, 20, 2, 15, 9, 4, 18, 6, 13]):  # unsorted on purpose
        mask[row, :length] = 1
    probe = torch.randn(12, 128)
    torch.manual_seed(0)
    encoder = TextEncoder("tiny_distilbert", vocab_size=50, dropout=0.0, length_buckets=buckets)
    weights = encoder.transformer.embeddings.word_embeddings.weight

    def states_and_gradient(encode) -> tuple[torch.Tensor, torch.Tensor]:
        weights.grad = None
        states = encode()
        (states * probe).sum().backward()   # not states**2: LayerNorm makes that sum constant
        return states.detach(), weights.grad.clone()

    plain = states_and_gradient(
        lambda: encoder.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
    bucketed = states_and_gradient(lambda: encoder(ids, mask))
    for got, expected in zip(bucketed, plain, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


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
    with pytest.raises(ValueError, match="length_buckets"):
        TextEncoder("tiny_distilbert", vocab_size=50, length_buckets=0)


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


@pytest.fixture
def saved_clip(tmp_path):
    from utils.models import save_clip
    from utils.tokenization import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(["a red circle", "a blue square"] * 5, vocab_size=60)
    model = CLIP(CLIPConfig(vocab_size=len(tokenizer), image_size=32, embed_dim=16))
    return save_clip(tmp_path / "clip", model, tokenizer)


def _edit_json(path, **changes):
    import json
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.safetensors").write_bytes(
            (f / "model.safetensors").read_bytes()[:1000]),
         "model.safetensors: the weights cannot be read"),
        (lambda f: (f / "model.safetensors").write_bytes(b"garbage"),
         "model.safetensors: the weights cannot be read"),
        (lambda f: _edit_json(f / "clip_config.json", embed_dim=8),
         "model.safetensors: the weights cannot be read or do not fit this CLIP"),
        (lambda f: _edit_json(f / "clip_config.json", colour="red"),
         "clip_config.json is not a config this code can build from.*colour"),
        (lambda f: _edit_json(f / "clip_config.json", image_encoder="resnet9"),
         "clip_config.json is not a config this code can build from.*resnet9"),
        (lambda f: (f / "clip_config.json").write_text("[1, 2]"),
         "clip_config.json: expected a JSON object"),
    ],
)
def test_load_clip_on_a_damaged_folder_names_the_file_and_what_to_do(saved_clip, damage, message):
    from utils.models import load_clip

    damage(saved_clip)
    with pytest.raises(ValueError, match=f"(?s){saved_clip}/{message}.*notebook 01 or `make demo`"):
        load_clip(saved_clip)


def test_token_ids_the_text_encoder_cannot_look_up_are_refused_with_what_to_do():
    encoder = TextEncoder(vocab_size=50, max_length=8)
    ones = torch.ones(2, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="length 9.*8 positions.*truncation=True, max_length=8"):
        encoder(ones, ones)
    with pytest.raises(ValueError, match="outside 0..49.*another tokenizer"):
        encoder(torch.full((2, 4), 50), torch.ones(2, 4, dtype=torch.long))
    encoder(torch.full((2, 8), 49), torch.ones(2, 8, dtype=torch.long))   # the limits themselves
