"""Shared test set-up: offline, deterministic, small."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402 - after the environment is set, before anything imports transformers
from tiny_clips import caption_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    """The small WordPiece tokenizer of ``tiny_clips`` (shared by the PACL and backbone tests)."""
    return caption_tokenizer()
