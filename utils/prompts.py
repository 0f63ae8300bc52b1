"""Training texts for PACL: the phrases captions use for single objects, in prompt templates.

PACL's compatibility asks "which patches match this text?". A whole caption ("a large red circle
left of a small blue square") is matched by the whole image, so every patch is asked to summarise
it. A phrase that names one object ("red circle") is matched by one region, and the question gets
a real answer. So the course trains PACL on the *object phrases* found in each image's captions,
each put into a CLIP-style prompt ("a photo of a red circle"): the same prompts segmentation uses
later for class names. This is the course's choice (see notebook 02 for what it changes); the
paper trains on captions.

One mechanism serves both datasets (:func:`extract_phrases`): a caption's words are looked up in a
:class:`PhraseVocabulary` of object *nouns* (singular; plurals undone: "dogs" -> "dog",
"children" -> "child", "puppies" -> "puppy") and of *modifiers* (colours, sizes, ...). Every noun
gives itself and, when modifiers stand right before it, the phrase with them ("a man in a red
shirt" -> "man", "shirt", "red shirt"). No parser (spaCy and NLTK need model downloads that Colab
and offline laptops may not have), so:

- recall: a noun outside the vocabulary is missed ("a man on a unicycle" gives only "man");
  extend the vocabulary's sets to fix that;
- no parsing: a listed word used as a verb counts ("a boy swings" gives "swing"), a noun used as
  a modifier counts on its own ("rock climbing" gives "rock"), and a modifier after its noun is
  not joined ("a large circle in red" gives "circle" and "large circle");
- compounds are not kept together ("tennis ball" gives "tennis" and "ball").
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from utils.sources.synthetic import COLOURS, SHAPES, SIZES

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

# Words that describe an object in Flickr8k captions: colours, sizes, ages, looks.
FLICKR_MODIFIERS: frozenset[str] = frozenset(
    """
    black white brown red blue green yellow orange pink purple grey gray tan golden blond blonde
    dark light striped spotted colorful small large big little tiny huge tall long short young old
    wet muddy dirty fluffy furry shirtless
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


@dataclass(frozen=True)
class PhraseVocabulary:
    """The words :func:`extract_phrases` looks for: object ``nouns`` (singular) and the
    ``modifiers`` that may stand before them (colours, sizes, ...), all lower case."""

    nouns: frozenset[str]
    modifiers: frozenset[str] = frozenset()


FLICKR_VOCABULARY = PhraseVocabulary(FLICKR_NOUNS, FLICKR_MODIFIERS)
# The synthetic set's captions name shapes with their colour and size ("a large red circle").
SHAPES_VOCABULARY = PhraseVocabulary(frozenset(SHAPES), frozenset(COLOURS) | frozenset(SIZES))


def extract_phrases(caption: str, vocabulary: PhraseVocabulary = FLICKR_VOCABULARY) -> list[str]:
    """The object phrases of ``caption``: each listed noun (singular), and the noun with the
    listed modifiers right before it, in order, each once.

    ``"Two black dogs chase a ball ."`` -> ``["dog", "black dog", "ball"]``;
    ``"a large red circle left of a star"`` (shapes vocabulary) ->
    ``["circle", "large red circle", "star"]``. See the module docstring for where it fails.
    """
    if not isinstance(caption, str):
        raise TypeError(f"extract_phrases takes one caption string, got {type(caption).__name__}")
    phrases: list[str] = []
    modifiers: list[str] = []            # the listed modifiers just before the current word
    for word in _WORD.findall(caption.lower()):
        noun = _listed_noun(word.removesuffix("'s"), vocabulary.nouns)
        if noun is not None:
            phrases += [noun, " ".join([*modifiers, noun])]
        modifiers = [*modifiers, word] if word in vocabulary.modifiers else []
    return list(dict.fromkeys(phrases))


def caption_phrases(captions: Sequence[str], vocabulary: PhraseVocabulary = FLICKR_VOCABULARY
                    ) -> list[str]:
    """The object phrases of all of one image's ``captions``, first occurrence first, each once."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of caption strings, not one string")
    return list(dict.fromkeys(phrase for caption in captions
                              for phrase in extract_phrases(caption, vocabulary)))


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
    vocabulary: PhraseVocabulary = FLICKR_VOCABULARY,
    templates: Sequence[str] = PROMPT_TEMPLATES,
    rng: np.random.Generator | None = None,
    with_captions: bool = False,
) -> list[str]:
    """One image's PACL training texts: the object phrases of its captions, in prompt templates.

    Args:
        captions: the image's captions.
        vocabulary: what counts as an object phrase (:func:`extract_phrases`).
        templates: prompt templates; every phrase goes into every template when ``rng`` is None,
            into one drawn at random with a numpy ``Generator`` (reproducible with a seed).
        with_captions: put the captions themselves first (the paper's training text). An image
            whose captions name no listed object keeps its captions in any case, so that it
            still has a text.

    Texts are normalised (:func:`normalise_text`) and each is kept once, first occurrence first.
    """
    for template in templates:
        _check_template(template)
    phrases = caption_phrases(captions, vocabulary)
    texts = [normalise_text(caption) for caption in captions] if with_captions or not phrases else []
    for phrase in phrases:
        chosen = templates if rng is None else [templates[int(rng.integers(len(templates)))]]
        texts += [normalise_text(format_prompt(template, phrase)) for template in chosen]
    return list(dict.fromkeys(text for text in texts if text))
