"""utils.tokenization: the offline WordPiece tokenizer and the pretrained loader (offline)."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest

import utils.data
from utils.tokenization import (
    SPECIAL_TOKENS,
    build_tokenizer,
    load_pretrained_tokenizer,
    train_wordpiece_tokenizer,
)

CAPTIONS = [
    "A red circle on the left .",
    "A blue square to the left of a green triangle .",
    "Two dogs are running through the grass , happily .",
    "A black dog jumps over a log .",
    "The children play football in the park .",
    "A man in a red shirt rides a bicycle .",
] * 3
TEXTS = ["A red circle.", "two black dogs jumping over the green grass", "a man"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(CAPTIONS, vocab_size=300, model_max_length=16)


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode, as HF_HUB_OFFLINE=1 sets it when huggingface_hub is imported."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _ids(tokenizer, texts=TEXTS):
    return tokenizer(list(texts), padding=True)["input_ids"]


def test_special_tokens_take_the_first_ids(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token, tokenizer.unk_token) == ("[PAD]", "[UNK]")
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token) == SPECIAL_TOKENS[2:]
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 2, 3)
    assert tokenizer.model_max_length == 16


def test_every_text_is_framed_by_cls_and_sep(tokenizer):
    ids = tokenizer("A red circle")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "circle", "[SEP]"]


def test_lower_cases_splits_punctuation_and_marks_continuations(tokenizer):
    assert tokenizer.tokenize("A RED Circle, GREEN.") == ["a", "red", "circle", ",", "green", "."]
    pieces = tokenizer.tokenize("circlesquare")  # unseen word made of seen pieces
    assert len(pieces) > 1 and all(piece.startswith("##") for piece in pieces[1:])
    assert tokenizer.decode(tokenizer("circlesquare")["input_ids"], skip_special_tokens=True) == (
        "circlesquare"
    )


def test_unknown_characters_become_unk(tokenizer):
    assert tokenizer.unk_token_id in tokenizer("a red ☃")["input_ids"]


def test_padding_to_the_longest_and_truncation(tokenizer):
    batch = tokenizer(TEXTS, padding="longest", truncation=True, max_length=6, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (3, 6) and ids.shape == mask.shape
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert ids[1, -1] == tokenizer.sep_token_id  # truncation keeps the closing [SEP]
    assert ids[2].tolist()[-2:] == [tokenizer.pad_token_id] * 2  # "[CLS] a man [SEP] [PAD] [PAD]"
    assert mask[2].tolist() == [1, 1, 1, 1, 0, 0]


def test_training_is_deterministic(tokenizer):
    again = train_wordpiece_tokenizer(iter(CAPTIONS), vocab_size=300, model_max_length=16)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert _ids(again) == _ids(tokenizer)


def test_vocab_size_is_respected():
    assert len(train_wordpiece_tokenizer(CAPTIONS, vocab_size=100)) == 100


def test_no_captions_is_an_error():
    with pytest.raises(ValueError, match="no captions"):
        train_wordpiece_tokenizer([])


def test_save_and_load_round_trip(tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tokenizer.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert _ids(loaded) == _ids(tokenizer)
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    assert loaded.model_max_length == 16


def test_pretrained_loader_reads_a_saved_folder_offline(tokenizer, tmp_path, offline):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_pretrained_tokenizer(str(tmp_path))
    assert _ids(loaded) == _ids(tokenizer)


def test_pretrained_loader_reads_a_bert_vocab_folder_offline(tmp_path, offline):
    vocab = [*SPECIAL_TOKENS, "a", "red", "circle", "##s", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 8}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = load_pretrained_tokenizer(str(tmp_path))
    ids = loaded("A Red circles .")["input_ids"]
    assert loaded.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "circle", "##s", ".", "[SEP]"]
    assert ids == [2, 5, 6, 7, 8, 9, 3]


def test_pretrained_loader_fails_offline_for_an_unknown_hub_name(offline):
    with pytest.raises(OSError):  # noqa: PT011 - the hub's wording is not ours to pin
        load_pretrained_tokenizer("no-such-user/no-such-tokenizer-for-clip-pacl")


def test_build_tokenizer_switch(tokenizer, tmp_path, offline):
    wordpiece = build_tokenizer("wordpiece", captions=CAPTIONS, name="ignored", vocab_size=300)
    assert wordpiece.get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    pretrained = build_tokenizer("pretrained", captions=CAPTIONS, name=str(tmp_path))
    assert _ids(pretrained) == _ids(tokenizer)
    with pytest.raises(ValueError, match="captions"):
        build_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="'bpe'"):
        build_tokenizer("bpe", captions=CAPTIONS)


def test_utils_data_re_exports_the_tokenizer_builders():
    assert utils.data.build_tokenizer is build_tokenizer
    assert utils.data.train_wordpiece_tokenizer is train_wordpiece_tokenizer
    assert utils.data.load_pretrained_tokenizer is load_pretrained_tokenizer
