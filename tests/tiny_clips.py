"""Tiny CLIPs for the PACL tests: the course's CLIP and a Hugging Face CLIP with random weights (no
download), and the small WordPiece tokenizer they share."""

from __future__ import annotations

import functools

import torch
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from utils.models import CLIP, CLIPConfig
from utils.tokenization import train_wordpiece_tokenizer

IMAGE_SIZE = 32
EMBED_DIM = 16
CAPTIONS = ["a red circle", "a photo of a blue star", "two squares and a green cross",
            "something yellow", "a large purple triangle on the left"]


@functools.cache
def caption_tokenizer():
    """A WordPiece tokenizer trained on ``CAPTIONS`` (built once per test session)."""
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

