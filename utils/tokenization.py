"""Tokenizers for the text encoder: WordPiece trained offline on the captions, or a pretrained one.

Both come back as a ``transformers`` tokenizer, so the rest of the course calls them the same way:
``tokenizer(texts, padding=True, truncation=True, max_length=..., return_tensors="pt")`` gives
``input_ids`` and ``attention_mask`` as ``LongTensor[B, L]`` with ``[CLS]`` at position 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = SPECIAL_TOKENS
PREFIX = "##"  # marks a piece that continues a word
DEFAULT_PRETRAINED_NAME = "distilbert-base-uncased"


def train_wordpiece_tokenizer(
    captions: Iterable[str], vocab_size: int = 2000, model_max_length: int = 64
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``captions``, offline and deterministically.

    Lower-cases, splits on whitespace and punctuation, marks word continuations with ``##`` and
    wraps every text as ``[CLS] text [SEP]`` so a text encoder can pool the token at position 0.
    The special tokens take ids 0-4 in the order of ``SPECIAL_TOKENS`` (``[PAD]`` is 0).
    About 0.6 s for 30,000 captions (the size of Flickr8k's training split) on two CPU cores.
    """
    texts = list(captions)
    if not texts:
        raise ValueError("train_wordpiece_tokenizer got no captions: pass the training captions.")
    vocab = _learn_wordpiece_vocab(texts, vocab_size)
    tokenizer = _bert_style_tokenizer(
        models.WordPiece(vocab=vocab, unk_token=UNK_TOKEN, continuing_subword_prefix=PREFIX)
    )
    tokenizer.post_processor = _cls_sep_template(tokenizer)
    # The wrapper gives the interface of a pretrained tokenizer (padding, truncation, tensors,
    # save_pretrained), so nothing downstream needs to know which kind it got.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        cls_token=CLS_TOKEN,
        sep_token=SEP_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
    )


def _bert_style_tokenizer(model: models.Model) -> Tokenizer:
    """``model`` behind BERT's lower-casing normaliser, whitespace+punctuation splitting, decoder."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=PREFIX)
    return tokenizer


def _learn_wordpiece_vocab(texts: list[str], vocab_size: int) -> dict[str, int]:
    """Token -> id learnt from ``texts``; the same on every run.

    The trainer gives ``##x`` continuation tokens ids in hash-map order, and those ids break ties
    between equally frequent merges, so two runs can learn different vocabularies
    (huggingface/tokenizers issue 1794). Registering every ``##x`` up front, sorted, fixes their
    ids and so the result. The trainer marks registered tokens as special, so this scratch
    tokenizer only supplies the vocabulary; the caller builds a clean one from it.
    """
    scratch = _bert_style_tokenizer(
        models.WordPiece(unk_token=UNK_TOKEN, continuing_subword_prefix=PREFIX)
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *_continuation_tokens(scratch, texts)],
        continuing_subword_prefix=PREFIX,
        show_progress=False,  # it takes about a second at most
    )
    scratch.train_from_iterator(texts, trainer=trainer)
    return scratch.get_vocab(with_added_tokens=False)


def _continuation_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[str]:
    """``##c`` for every character ``c`` that can occur inside a word of ``texts``, sorted.

    Characters are normalised one at a time (lower-casing and accent stripping act per
    character): pre-tokenizing every text from Python would take seconds on Flickr8k.
    """
    normalized = {
        char for raw in set("".join(texts)) for char in tokenizer.normalizer.normalize_str(raw)
    }
    return sorted(PREFIX + char for char in normalized if _can_continue_a_word(tokenizer, char))


def _can_continue_a_word(tokenizer: Tokenizer, char: str) -> bool:
    # The pre-tokenizer splits words at whitespace and punctuation; any other character can
    # follow another inside a word.
    return not char.isspace() and len(tokenizer.pre_tokenizer.pre_tokenize_str("a" + char)) == 1


def _cls_sep_template(tokenizer: Tokenizer) -> processors.TemplateProcessing:
    """BERT's framing: ``[CLS] A [SEP]`` for one text, ``[CLS] A [SEP] B [SEP]`` for a pair."""
    return processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        pair=f"{CLS_TOKEN} $A {SEP_TOKEN} $B:1 {SEP_TOKEN}:1",
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in (CLS_TOKEN, SEP_TOKEN)],
    )


def load_pretrained_tokenizer(
    name: str = DEFAULT_PRETRAINED_NAME, **kwargs: Any
) -> PreTrainedTokenizerBase:
    """A pretrained tokenizer by hub name or local folder (``AutoTokenizer.from_pretrained``).

    Needs the network the first time (or the local Hugging Face cache, or a folder written by
    ``save_pretrained``); ``kwargs`` go to ``from_pretrained``.
    """
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the tokenizer {name!r} (see the error above). A hub name needs the "
            "network the first time, or a copy in the local Hugging Face cache (HF_HUB_OFFLINE=1 "
            "forbids fetching); a folder must hold what save_pretrained writes. Without either, "
            "use build_tokenizer('wordpiece', captions=...), which needs no network."
        ) from error


def build_tokenizer(
    kind: str, captions: Iterable[str] | None = None, name: str | None = None, **kwargs: Any
) -> PreTrainedTokenizerBase:
    """The course's tokenizer switch.

    ``kind="wordpiece"``: train on ``captions`` (offline; ``kwargs`` go to
    :func:`train_wordpiece_tokenizer`). ``kind="pretrained"``: load ``name`` (default
    ``distilbert-base-uncased``; ``kwargs`` go to :func:`load_pretrained_tokenizer`).
    Each kind ignores the other's argument, so a notebook can always pass both.
    """
    if kind == "wordpiece":
        if captions is None:
            raise ValueError("build_tokenizer('wordpiece') trains on captions: pass captions=...")
        return train_wordpiece_tokenizer(captions, **kwargs)
    if kind == "pretrained":
        return load_pretrained_tokenizer(name or DEFAULT_PRETRAINED_NAME, **kwargs)
    raise ValueError(f"Unknown tokenizer kind {kind!r}: use 'wordpiece' or 'pretrained'.")
