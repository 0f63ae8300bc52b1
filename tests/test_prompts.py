"""Tests for utils.prompts: object phrases from Flickr-style and synthetic captions, prompts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from utils.prompts import (
    FLICKR_NOUNS,
    FLICKR_VOCABULARY,
    PROMPT_TEMPLATES,
    SHAPES_VOCABULARY,
    PhraseVocabulary,
    caption_phrases,
    extract_phrases,
    format_prompt,
    training_texts,
)
from utils.sources.synthetic import render_sample


def nouns_of(caption: str, vocabulary: PhraseVocabulary = FLICKR_VOCABULARY) -> list[str]:
    return [phrase for phrase in extract_phrases(caption, vocabulary) if " " not in phrase]


@pytest.mark.parametrize("caption, nouns", [
    ("A black dog and a spotted dog are fighting", ["dog"]),
    ("Two young children are playing on the beach .", ["child", "beach"]),
    ("A man in a red shirt is climbing a rock wall .", ["man", "shirt", "rock", "wall"]),
    ("A girl 's puppies chase balls through the grass", ["girl", "puppy", "ball", "grass"]),
    ("People stand near the horses at a fence .", ["person", "horse", "fence"]),
    ("A woman wearing sunglasses and jeans sits on a bench", ["woman", "sunglasses", "jeans",
                                                             "bench"]),
    ("A boy in a t-shirt rides his bike down the street .", ["boy", "t-shirt", "bike", "street"]),
    ("The man's dogs swim in the lake", ["man", "dog", "lake"]),
    ("Men and women dance in boxes", ["man", "woman", "box"]),
    ("A skateboarder does a trick on a ramp .", ["skateboarder", "ramp"]),
])
def test_the_nouns_of_flickr_style_captions(caption, nouns):
    assert nouns_of(caption) == nouns


@pytest.mark.parametrize("caption, phrases", [
    ("A black dog and a spotted dog are fighting", ["dog", "black dog", "spotted dog"]),
    ("Two young children are playing on the beach .", ["child", "young child", "beach"]),
    ("A man in a red shirt is climbing a rock wall .",
     ["man", "shirt", "red shirt", "rock", "wall"]),
    ("A little black dog runs", ["dog", "little black dog"]),
    ("a dog black", ["dog"]),                        # a modifier after its noun is not joined
])
def test_noun_phrases_keep_the_modifiers_right_before_the_noun(caption, phrases):
    assert extract_phrases(caption) == phrases


@pytest.mark.parametrize("caption, phrases", [
    ("a large red circle to the left of a small blue square",
     ["circle", "large red circle", "square", "small blue square"]),
    ("a photo of a red circle and a blue square", ["circle", "red circle", "square",
                                                   "blue square"]),
    ("two circles and a cross", ["circle", "cross"]),
    ("there are two shapes: a large star in green and a small triangle at the top",
     ["star", "large star", "triangle", "small triangle"]),
    ("something red and something blue", []),
])
def test_the_same_mechanism_reads_the_synthetic_captions(caption, phrases):
    assert extract_phrases(caption, SHAPES_VOCABULARY) == phrases


def test_phrases_of_generated_captions_name_the_generators_objects():
    # Every object of a generated image is named with its colour by some caption, and nothing
    # else is named: the captions carry what the generator's metadata knows.
    for seed in range(60):
        sample = render_sample(np.random.default_rng(seed), 64)
        phrases = caption_phrases(sample.captions, SHAPES_VOCABULARY)
        for obj in sample.objects:
            assert obj.shape in phrases and f"{obj.colour} {obj.shape}" in phrases
        for phrase in phrases:
            *modifiers, noun = phrase.split()
            assert any(o.shape == noun and set(modifiers) <= {o.colour, o.size}
                       for o in sample.objects), (phrase, sample.captions)


def test_phrase_extraction_limits_and_options():
    assert nouns_of("A man rides a unicycle") == ["man"]        # not in the vocabulary
    wider = PhraseVocabulary(FLICKR_NOUNS | {"unicycle"}, frozenset({"tall"}))
    assert extract_phrases("A man rides a tall unicycle", wider) == ["man", "unicycle",
                                                                     "tall unicycle"]
    assert extract_phrases("") == [] and extract_phrases("is running quickly .") == []
    assert all(noun == noun.lower() and " " not in noun for noun in FLICKR_NOUNS)
    with pytest.raises(TypeError, match="one caption string"):
        extract_phrases(["a dog"])
    with pytest.raises(TypeError, match="list of caption strings"):
        caption_phrases("a dog")


def test_format_prompt_fixes_the_article():
    assert format_prompt("a photo of a {}.", "orange circle") == "a photo of an orange circle."
    assert format_prompt("an image of a {}.", "egg") == "an image of an egg."
    assert format_prompt("a {}.", "apple") == "an apple."
    assert format_prompt("a photo of a {}.", "dog") == "a photo of a dog."
    assert format_prompt("a photo of the {}.", "apple") == "a photo of the apple."
    with pytest.raises(ValueError, match="exactly one"):
        format_prompt("a photo of a dog.", "dog")


def test_training_texts_put_every_phrase_in_every_template_once():
    texts = training_texts(["A Dog  runs .", "a black dog runs ."])
    assert len(texts) == len(set(texts)) == 2 * len(PROMPT_TEMPLATES)     # "dog", "black dog"
    assert "a photo of a black dog" in texts and "a dog" in texts
    with_captions = training_texts(["A Dog  runs .", "a dog runs ."], with_captions=True)
    assert with_captions[0] == "a dog runs ." and len(with_captions) == 1 + len(PROMPT_TEMPLATES)


def test_training_texts_with_rng_pick_one_template_per_phrase():
    captions = ["a red circle and a star"]
    texts = training_texts(captions, SHAPES_VOCABULARY, rng=np.random.default_rng(0))
    phrases = ["circle", "red circle", "star"]
    assert len(texts) == len(phrases)
    assert texts == training_texts(captions, SHAPES_VOCABULARY, rng=np.random.default_rng(0))
    for phrase, text in zip(phrases, texts, strict=True):
        assert phrase in text and any(text == format_prompt(t, phrase) for t in PROMPT_TEMPLATES)
    with pytest.raises(TypeError, match="list of caption strings"):
        training_texts("a red circle", SHAPES_VOCABULARY)
    with pytest.raises(ValueError, match="exactly one"):
        training_texts(captions, SHAPES_VOCABULARY, templates=("a photo",))


def test_an_image_whose_captions_name_nothing_keeps_its_captions():
    assert training_texts(["Something Red and something blue"], SHAPES_VOCABULARY) == [
        "something red and something blue"]


def test_templates_use_words_the_synthetic_captions_use():
    # The course's tokenizer is trained on the synthetic captions: prompts should not need
    # words it has never seen.
    caption_words = set()
    for seed in range(150):
        sample = render_sample(np.random.default_rng(seed), 32)
        caption_words.update(w for c in sample.captions for w in c.split())
    for template in PROMPT_TEMPLATES:
        assert set(re.findall(r"[a-z]+", template.replace("{}", ""))) <= caption_words, template
