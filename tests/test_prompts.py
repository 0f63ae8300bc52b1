"""Tests for utils.prompts: nouns from Flickr-style captions, synthetic object words, prompts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from utils.prompts import (
    FLICKR_NOUNS,
    PROMPT_TEMPLATES,
    extract_nouns,
    format_prompt,
    synthetic_object_words,
    training_texts,
)
from utils.synthetic import COLOURS, SHAPES, generate_captioned_shapes, render_sample


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
def test_extract_nouns_from_flickr_style_captions(caption, nouns):
    assert extract_nouns(caption) == nouns


def test_extract_nouns_limits_and_options():
    assert extract_nouns("A man rides a unicycle") == ["man"]        # not in the vocabulary
    assert extract_nouns("A man rides a unicycle", FLICKR_NOUNS | {"unicycle"}) == ["man",
                                                                                     "unicycle"]
    assert extract_nouns("") == [] and extract_nouns("is running quickly .") == []
    assert all(noun == noun.lower() and " " not in noun for noun in FLICKR_NOUNS)
    with pytest.raises(TypeError, match="one caption string"):
        extract_nouns(["a dog"])


def test_synthetic_object_words_from_a_generated_objects_json(tmp_path):
    root = generate_captioned_shapes(tmp_path / "shapes", num_train=6, num_dev=0, num_test=0,
                                     image_size=32, progress=False)
    objects = json.loads((root / "objects.json").read_text())
    for name, image_objects in objects.items():
        words = synthetic_object_words(objects, name)
        assert len(words) == len(set(words))
        for obj in image_objects:
            assert obj["shape"] in words and f"{obj['colour']} {obj['shape']}" in words
        assert all(w in SHAPES or (w.split()[0] in COLOURS and w.split()[1] in SHAPES)
                   for w in words)
    with pytest.raises(KeyError, match="objects.json of the same dataset"):
        synthetic_object_words(objects, "missing.png")


def test_synthetic_object_words_keep_order_and_merge_repeats():
    objects = {"a.png": [{"shape": "circle", "colour": "red", "size": "small", "box": [0] * 4},
                         {"shape": "circle", "colour": "blue", "size": "large", "box": [0] * 4}]}
    assert synthetic_object_words(objects, "a.png") == ["circle", "red circle", "blue circle"]
    with pytest.raises(ValueError, match="lacks 'shape' or 'colour'"):
        synthetic_object_words({"b.png": [{"shape": "star"}]}, "b.png")


def test_format_prompt_fixes_the_article():
    assert format_prompt("a photo of a {}.", "orange circle") == "a photo of an orange circle."
    assert format_prompt("an image of a {}.", "egg") == "an image of an egg."
    assert format_prompt("a {}.", "apple") == "an apple."
    assert format_prompt("a photo of a {}.", "dog") == "a photo of a dog."
    assert format_prompt("a photo of the {}.", "apple") == "a photo of the apple."
    with pytest.raises(ValueError, match="exactly one"):
        format_prompt("a photo of a dog.", "dog")


def test_training_texts_are_captions_then_every_prompt_once():
    texts = training_texts(["A Dog  runs .", "a dog runs ."], ["dog", "ball", "dog"])
    assert texts[0] == "a dog runs ."
    assert len(texts) == len(set(texts)) == 1 + 2 * len(PROMPT_TEMPLATES)
    assert "a photo of a ball" in texts and "a dog" in texts


def test_training_texts_with_rng_pick_one_template_per_word():
    words = ["circle", "red circle", "star"]
    texts = training_texts(["a red circle and a star"], words, rng=np.random.default_rng(0))
    assert len(texts) == 1 + len(words)
    assert texts == training_texts(["a red circle and a star"], words, rng=np.random.default_rng(0))
    for word, text in zip(words, texts[1:], strict=True):
        assert word in text and any(text == format_prompt(t, word) for t in PROMPT_TEMPLATES)
    with pytest.raises(TypeError, match="list of caption strings"):
        training_texts("a red circle", words)
    with pytest.raises(ValueError, match="exactly one"):
        training_texts(["a circle"], words, templates=("a photo",))


def test_templates_use_words_the_synthetic_captions_use():
    # The course's tokenizer is trained on the synthetic captions: prompts should not need
    # words it has never seen.
    caption_words = set()
    for seed in range(150):
        sample = render_sample(np.random.default_rng(seed), 32)
        caption_words.update(w for c in sample.captions for w in c.split())
    for template in PROMPT_TEMPLATES:
        assert set(re.findall(r"[a-z]+", template.replace("{}", ""))) <= caption_words, template
