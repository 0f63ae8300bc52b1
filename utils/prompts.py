"""Training texts for PACL: captions plus the objects they name, wrapped in prompt templates.

PACL (Mukhoti et al., CVPR 2023) trains on full captions and on the nouns found in them, each put
into a CLIP-style prompt such as "a photo of a dog.". At test time, segmentation scores every patch
against class prompts built from the same templates, so training on them keeps those prompts
in-distribution.

Nouns are found without spaCy or NLTK (both need model downloads that Colab and offline laptops may
not have): a caption's words are looked up in a curated vocabulary of object nouns common in Flickr8k
captions, after undoing plurals ("dogs" -> "dog", "children" -> "child", "puppies" -> "puppy").
Limits of this approach:

- recall: a noun outside the vocabulary is missed ("a man on a unicycle" gives only "man");
  pass ``vocabulary=`` to extend it;
- no parsing: a listed word used as a verb counts ("a boy swings" gives "swing"), and a noun used as
  a modifier counts too ("rock climbing" gives "rock");
- one word each: compounds are not kept together ("tennis ball" gives "tennis" and "ball").

For the synthetic set no guessing is needed: the generator wrote every image's objects to
``objects.json`` (:func:`synthetic_object_words`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

# Close to the short captions of the synthetic set ("a photo of ...", "an image of ...", "a circle"),
# so the course's own tokenizer knows their words, and close to CLIP's usual prompts. No final
# period: the synthetic captions have none, so a WordPiece tokenizer trained on them maps "." to
# [UNK], a token the course CLIP never saw in training.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a drawing of a {}",
    "a photo of the {}",
    "there is a {}",
    "a {}",
)

# Object nouns that Flickr8k captions use often, in singular form, grouped by theme.
FLICKR_NOUNS: frozenset[str] = frozenset(
    """
    man woman boy girl child kid baby toddler person guy lady teenager adult player athlete biker
    bicyclist cyclist rider skier snowboarder skateboarder surfer swimmer climber runner dancer
    musician singer performer crowd group team family couple worker officer policeman soldier
    clown cowboy audience spectator referee goalie wrestler hiker tourist mother father

    dog puppy cat kitten horse pony cow bull sheep goat pig bird duck goose chicken seagull pigeon
    fish camel elephant deer monkey bear animal poodle terrier retriever collie greyhound dalmatian

    shirt t-shirt jacket coat dress skirt hat cap helmet jersey uniform costume sweater sweatshirt
    hoodie vest scarf glove boot shoe sneaker sandal sock jeans shorts pants trousers swimsuit
    bikini suit tie glasses sunglasses goggles mask backpack bag purse outfit wetsuit apron bandana

    face hand arm leg foot head hair mouth eye nose ear tongue tooth

    ball football soccer basketball baseball volleyball tennis frisbee stick toy rope bat racket net
    goal hoop skateboard surfboard snowboard ski sled kite bicycle bike motorcycle scooter car truck
    bus train boat kayak canoe raft wagon cart stroller umbrella camera phone microphone guitar drum
    instrument flag sign banner balloon bubble box bucket bottle cup drink food cake pizza sandwich
    book paper chair bench table couch bed blanket towel tent swing slide trampoline ladder log tire
    fountain sprinkler hose

    fence wall door window building house store shop restaurant bridge tower statue pole post ramp
    rail stairs step track trail path road street sidewalk highway city town market stage platform
    arena stadium court field park playground yard garden lawn grass tree bush flower leaf plant
    forest woods jungle mountain hill cliff valley canyon desert sand dirt mud rock stone boulder
    beach shore ocean sea lake river stream creek pond pool water wave waterfall puddle snow ice sky
    sun sunset cloud rain fire smoke room kitchen floor carpet
    """.split()
)

IRREGULAR_PLURALS: dict[str, str] = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
    "teeth": "tooth", "geese": "goose", "leaves": "leaf", "policemen": "policeman",
}  # fmt: skip

# A word, possibly with inner hyphens or an apostrophe ("t-shirt", "man's").
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
# The article "a" right before the slot of a template ("a photo of a {}" -> "...of an apple").
_ARTICLE_BEFORE_SLOT = re.compile(r"(^|\s)a $")


def extract_nouns(caption: str, vocabulary: Collection[str] = FLICKR_NOUNS) -> list[str]:
    """The object nouns of ``caption`` found in ``vocabulary``, singular, in order, each once.

    ``"Two dogs chase a ball on the beach ."`` -> ``["dog", "ball", "beach"]``. See the module
    docstring for how this works and where it fails.
    """
    if not isinstance(caption, str):
        raise TypeError(f"extract_nouns takes one caption string, got {type(caption).__name__}")
    nouns: list[str] = []
    for word in _WORD.findall(caption.lower()):
        noun = _listed_noun(word.removesuffix("'s"), vocabulary)
        if noun is not None and noun not in nouns:
            nouns.append(noun)
    return nouns


def _listed_noun(word: str, vocabulary: Collection[str]) -> str | None:
    """``word`` or its singular if the vocabulary lists it, else None."""
    for candidate in (word, IRREGULAR_PLURALS.get(word), *_singular_guesses(word)):
        if candidate in vocabulary:
            return candidate
    return None


def _singular_guesses(word: str) -> Iterable[str]:
    # Only guesses: the vocabulary decides which one (if any) is a word ("horses" -> "hors" is
    # rejected, "horse" accepted; "boxes" -> "box").
    if word.endswith("ies"):
        yield word[:-3] + "y"
    if word.endswith("es"):
        yield word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        yield word[:-1]


def synthetic_object_words(objects_json: Mapping[str, list[dict]], image_name: str) -> list[str]:
    """Object words of one synthetic image, from the generator's ``objects.json`` (already parsed).

    Each object gives its shape and its colour with its shape: an image with a red circle and a
    blue star -> ``["circle", "red circle", "star", "blue star"]`` (each word once).
    """
    if image_name not in objects_json:
        raise KeyError(
            f"{image_name!r} is not in objects.json ({len(objects_json)} images). Pass the "
            "objects.json of the same dataset folder as the images (json.load it first)."
        )
    words: list[str] = []
    for obj in objects_json[image_name]:
        if "shape" not in obj or "colour" not in obj:
            raise ValueError(
                f"objects.json entry of {image_name!r} lacks 'shape' or 'colour': {obj!r}. "
                "Regenerate the dataset with utils.synthetic.generate_captioned_shapes."
            )
        for word in (obj["shape"], f"{obj['colour']} {obj['shape']}"):
            if word not in words:
                words.append(word)
    return words


def format_prompt(template: str, word: str) -> str:
    """Put ``word`` into ``template``'s ``{}``, turning "a" before it into "an" before a vowel.

    ``format_prompt("a photo of a {}.", "orange circle")`` -> ``"a photo of an orange circle."``
    (a vowel-letter rule: "a uniform" becomes "an uniform").
    """
    _check_template(template)
    before, after = template.split("{}")
    if word and word[0].lower() in "aeiou":
        before = _ARTICLE_BEFORE_SLOT.sub(r"\1an ", before)
    return f"{before}{word}{after}"


def _check_template(template: str) -> None:
    if template.count("{}") != 1:
        raise ValueError(
            f"prompt template {template!r} needs exactly one '{{}}' where the object word goes, "
            "e.g. 'a photo of a {}.'"
        )


def normalise_text(text: str) -> str:
    """Lower-case, single spaces, no outer spaces. Both CLIP tokenizers the course uses lower-case
    anyway, so "A dog" and "a dog" are one text to the model and should be one text here too."""
    return " ".join(text.lower().split())


def training_texts(
    captions: Sequence[str],
    object_words: Iterable[str],
    templates: Sequence[str] = PROMPT_TEMPLATES,
    rng: np.random.Generator | None = None,
) -> list[str]:
    """One image's PACL training texts: its captions, then its object words in prompt templates.

    Every template is used for every word when ``rng`` is None; with a numpy ``Generator`` each
    word gets one template drawn at random (fewer texts, so captions keep a larger share when a
    training item draws one of its image's texts uniformly). Texts are normalised
    (:func:`normalise_text`) and each is kept once, first occurrence first.
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a list of caption strings, not one string")
    for template in templates:
        _check_template(template)
    texts = [normalise_text(caption) for caption in captions]
    for word in object_words:
        chosen = templates if rng is None else [templates[int(rng.integers(len(templates)))]]
        texts += [normalise_text(format_prompt(template, word)) for template in chosen]
    return list(dict.fromkeys(text for text in texts if text))
