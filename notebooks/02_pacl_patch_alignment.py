# %% [markdown]
# # 02 · PACL: teaching CLIP's patches to read
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/clip-pacl/clip-pacl/blob/main/notebooks/02_pacl_patch_alignment.ipynb)
#
# To see what it shows before running anything: [this notebook run in full offline](executed/02_pacl_patch_alignment.ipynb),
# with every output and figure, on a 2-core CPU.
#
# CLIP compares a whole image with a whole sentence. It cannot tell you *where* in the image the
# sentence applies. PACL (Mukhoti et al., CVPR 2023, *Open Vocabulary Semantic Segmentation with
# Patch Aligned Contrastive Learning*) keeps a trained CLIP frozen and trains one small module on top
# of it, so that the image's **patches** line up with the text. It needs no masks, only the same
# image-caption pairs CLIP learned from. In this notebook you will:
#
# 1. load the frozen CLIP (the one notebook 01 trained, or OpenAI's ViT-B/16 on Colab);
# 2. look at patch-text similarity maps of the plain CLIP and see why they do not localise;
# 3. write PACL's *compatibility function* in a few lines and check it against the course's version;
# 4. see why PACL's softmax over the patches needs texts that name one region, and a temperature;
#    build those texts from the captions;
# 5. compute the frozen features once, then train the small *vision embedder* from that cache;
# 6. compare the maps before and after PACL, against the ground-truth masks;
# 7. measure what the texts and the temperature change (offline), and what happens to
#    image-level tasks (zero-shot classification, retrieval);
# 8. save the trained embedder for notebook 03 (segmentation).
#
# | | offline (a laptop CPU) | Google Colab (GPU runtime) |
# |---|---|---|
# | frozen CLIP | the course's CLIP from notebook 01 (tiny CNN, 16 × 16 grid at 64 px) | OpenAI CLIP ViT-B/16 (14 × 14 patches at 224 px), the paper's backbone |
# | data | captioned shapes, with masks | Flickr8k (no masks: maps are shown, not scored) |
#
# `CLIP_PACL_FAST=1` turns on FAST mode: a smoke run of a minute or two on the small synthetic set,
# with a CLIP that has had only a few epochs. Its numbers only show that every step works. Read the
# printed numbers and the plots of your own run: the notes after each of them say what to look for.

# %% [markdown]
# ## 0 · Set-up
#
# On Colab this clones the course and installs its requirements and package (Colab's own torch
# is kept). Locally it only checks that the package is installed (`make setup` does it).

# %% tags=["setup"]
import importlib
import importlib.util
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

# The course's repository. Using a fork or your own copy? Set its URL here: the only place.
REPO_URL = "https://github.com/clip-pacl/clip-pacl"
DRIVE_FOLDER = Path("/content/drive/MyDrive")   # where a copy kept in Google Drive is looked for

if "google.colab" in sys.modules:
    name = REPO_URL.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    repo = Path.cwd() / name                     # Colab starts every notebook in /content
    uploaded = sorted(Path.cwd().glob(f"{name}*.zip"))   # GitHub's "Download ZIP": NAME-main.zip
    if not repo.exists() and uploaded:
        unzipped = Path.cwd() / f".{name}_unzipped"
        with zipfile.ZipFile(uploaded[-1]) as archive:
            archive.extractall(unzipped)
        top = min((p.parent for p in unzipped.rglob("requirements.txt")), key=lambda p: len(p.parts))
        top.rename(repo)
        shutil.rmtree(unzipped)
    elif not repo.exists() and (DRIVE_FOLDER / name / "requirements.txt").is_file():
        repo = DRIVE_FOLDER / name
    elif not repo.exists():
        clone = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)],
                               capture_output=True, text=True)
        if clone.returncode != 0:
            said = (clone.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(
                f"Could not download the course from {REPO_URL} (git: {said}). Do one of these, "
                "then run this cell again:\n"
                "1. Using a fork or a copy? Set REPO_URL at the top of this cell to its URL.\n"
                f"2. Upload the course as a zip: on its GitHub page, Code > Download ZIP, then drag "
                f"the {name}-main.zip file into Colab's Files panel (it lands in {Path.cwd()}).\n"
                f"3. Keep a copy of the course in Google Drive as MyDrive/{name}, then mount Drive: "
                "from google.colab import drive; drive.mount('/content/drive').")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                    str(repo / "requirements.txt")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(repo)],
                   check=True)
    for folder in site.getsitepackages():    # let this running kernel see the new install
        site.addsitedir(folder)
    importlib.invalidate_caches()
if importlib.util.find_spec("utils") is None:
    raise ModuleNotFoundError(
        "The course package `utils` is not installed for this kernel's Python. In the "
        "repository, run `make setup` and pick .venv's kernel, or run `pip install -e .`; then "
        "restart the kernel.")

# %%
import functools
import json
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from utils.backbones import HF_CLIP_NAME, CourseCLIPBackbone, load_hf_clip
from utils.course import practice
from utils.course.demo import DemoConfig, run_demo
from utils.course.notebook import (
    IN_COLAB,
    SYNTHETIC_SIZES,
    count_parameters,
    data_dir,
    fast_mode,
    format_table,
    outputs_dir,
    pick_device,
    show,
    synthetic_dataset,
)
from utils.course.standalone import keep_outputs_in_drive
from utils.data import (
    ImageCaptionDataset,
    load_image,
    load_split,
    locate_dataset,
)
from utils.metrics import recall_at_k
from utils.models import load_clip
from utils.pacl import (
    PACL,
    pacl_batch_loss,
    pacl_compatibility,
    pacl_parameter_groups,
    patch_text_similarity,
    patch_weights,
)
from utils.plots.clip import plot_training_curves
from utils.positives import caption_positives
from utils.prompts import (
    FLICKR_VOCABULARY,
    PROMPT_TEMPLATES,
    SHAPES_VOCABULARY,
    caption_phrases,
    extract_phrases,
    format_prompt,
    normalise_text,
    training_texts,
)
from utils.sources.flickr8k import FLICKR8K_ARCHIVES, FLICKR8K_BASE_URL, prepare_flickr8k
from utils.sources.synthetic import CLASS_NAMES, COLOURS, SHAPES, shape_footprint
from utils.storage.feature_cache import cache_features, pacl_feature_loader
from utils.storage.pacl_io import load_pacl, save_pacl
from utils.train import TrainConfig, fit, seed_everything

# %% [markdown]
# ### Parameters
#
# Offline, the frozen backbone is the course's CLIP that notebook 01 saved to
# `outputs/01_clip/clip`; on Colab it is OpenAI's CLIP ViT-B/16. Results go to `outputs/02_pacl/`
# (or under `$CLIP_PACL_OUTPUTS`), data to `data/` (or `$CLIP_PACL_DATA`).

# %% tags=["parameters"]
# Parameters
FAST = fast_mode()                        # CLIP_PACL_FAST=1: small synthetic set, few epochs
BACKBONE = "openai" if IN_COLAB else "course"
DATASET = "flickr8k" if BACKBONE == "openai" else "synthetic"
CLIP_NAME = HF_CLIP_NAME                  # Colab's CLIP: a Hugging Face hub name or a local folder
FLICKR8K_URL, FLICKR8K_MD5S = FLICKR8K_BASE_URL, FLICKR8K_ARCHIVES   # where Flickr8k comes from

if BACKBONE == "openai":                  # Colab: the paper's backbone, 224 px, D = 512
    IMAGE_SIZE = 224
    EPOCHS, BATCH_SIZE, LR = (1 if FAST else 10), 128, 1e-3
else:                                     # offline: the course's CLIP, D = 128
    IMAGE_SIZE = None                     # the size the CLIP was trained at (read from it below)
    EPOCHS, BATCH_SIZE, LR = 4, 64, 1e-2  # as `make demo`
TEMPERATURE = 0.1                         # softmax over patches: the course's; None = plain cosines
COMPARE_RECIPES = DATASET == "synthetic"  # section 7: retrain with the paper's texts and softmax
KEEP_IN_DRIVE = False                     # Colab: outputs in Google Drive, for notebook 03

SEED = 0
NUM_WORKERS = 2 if IN_COLAB else 0
DEVICE = pick_device()
if KEEP_IN_DRIVE and IN_COLAB:
    keep_outputs_in_drive()
DATA_DIR = data_dir()                     # $CLIP_PACL_DATA or <repo>/data
CLIP_DIR = outputs_dir("01_clip") / "clip"   # where notebook 01 saved its CLIP
OUT_DIR = outputs_dir("02_pacl")          # $CLIP_PACL_OUTPUTS/02_pacl or <repo>/outputs/02_pacl

print(f"backbone={BACKBONE}  dataset={DATASET}  fast={FAST}  device={DEVICE}  epochs={EPOCHS}  "
      f"batch={BATCH_SIZE}  lr={LR}\noutputs -> {OUT_DIR}")

# %% [markdown]
# ## 1 · The frozen CLIP
#
# PACL never changes CLIP: both encoders stay frozen. What it needs from CLIP is three things,
# which `utils.backbones` wraps behind one interface (`FrozenBackbone`) for the course's model and for
# Hugging Face's:
#
# - `patch_embeddings(images)`: one vector per patch, `[B, P, D]`, already in CLIP's joint space. For
#   a ViT these are the patch tokens after the final layer norm and the visual projection, which CLIP
#   itself only applies to the class token. For the course's CNN they are the cells of its last feature map
#   (the image vector is their average; with `attention_pool=True`, the attention pool's values),
#   each sent through the image projection head;
# - `text_embeddings(texts)`: one unit vector per text, `[T, D]`;
# - `image_embeddings(images)`: CLIP's own image vector, `[B, D]`, for the comparison at the end.
#
# If notebook 01 has not been run here, the next cell trains a CLIP first with `utils.course.demo`,
# the same recipe, into `outputs/01_clip` (about two minutes in FAST mode, longer for the full
# size).

# %%
if BACKBONE == "openai":
    backbone = load_hf_clip(CLIP_NAME, device=DEVICE)        # downloads ~600 MB the first time
    source = CLIP_NAME
else:
    if not (CLIP_DIR / "clip_config.json").exists():
        print(f"No CLIP in {CLIP_DIR}: notebook 01 has not been run here. Training one now with "
              "utils.course.demo (the same recipe as notebook 01).")
        make_config = DemoConfig.fast if FAST else DemoConfig
        size = "fast" if FAST else "full"
        run_demo(make_config(data_root=str(synthetic_dataset(FAST)), out_dir=str(CLIP_DIR.parent),
                             clip_only=True, **SYNTHETIC_SIZES[size]))
    clip_model, clip_tokenizer = load_clip(CLIP_DIR, device=DEVICE)
    backbone = CourseCLIPBackbone(clip_model, clip_tokenizer)
    IMAGE_SIZE = clip_model.config.image_size
    source = str(CLIP_DIR)

GRID = backbone.grid_shape(IMAGE_SIZE)
EMBED_DIM = backbone.text_embeddings(["a"]).shape[-1]
print(f"frozen CLIP: {source}\nimages {IMAGE_SIZE} px -> a {GRID[0]} x {GRID[1]} grid of "
      f"{GRID[0] * GRID[1]} patches, joint space D = {EMBED_DIM}; parameters that still require "
      f"gradients: {sum(p.requires_grad for p in backbone.model.parameters())}")

# %%
if DATASET == "flickr8k":                                  # ~1 GB, downloaded once
    dataset_root = prepare_flickr8k(DATA_DIR / "flickr8k", base_url=FLICKR8K_URL,
                                    archives=FLICKR8K_MD5S)
    objects = None                                          # photos come without object records
else:
    dataset_root = synthetic_dataset(FAST, image_size=IMAGE_SIZE)
    objects = json.loads((dataset_root / "objects.json").read_text())

files = locate_dataset(dataset_root)
train_items, test_items = load_split(files, "train"), load_split(files, "test")
test_names = [name for name, _ in test_items]
print(f"{dataset_root}: {len(train_items)} training and {len(test_items)} test images")


# %% [markdown]
# ## 2 · Why a CLIP trained on whole images cannot localise
#
# CLIP's loss sees one vector per image: the class token of a ViT, or the average of the feature
# grid for the course's CNN. Nothing in training ever asks an individual patch to agree with a
# caption. The patch vectors live in the same space, so we *can* compare each of them with a text,
# but whether that comparison means "this word is here" is left to chance.
#
# Let us look. `patch_text_similarity` gives the cosine of every patch with every text,
# `[B, T, P]`; reshaped to the grid it is a heatmap of the text over the image.
#
# Which text? A single word is an unusual caption, so each word is put into the seven templates of
# `utils.prompts.PROMPT_TEMPLATES` ("a photo of a {}.", "a drawing of a {}.", …) and the seven text
# vectors are averaged into one: a *prompt ensemble*, as in notebook 01's zero-shot section (the
# idea is CLIP's, Sec. 3.1.4; the seven templates are the course's). Below, a few test images and one map per word (bright = high cosine;
# each map has its own colour scale, with its range printed under it).

# %%
def pixels(names):
    # The backbone's eval transform (resize, normalise) for a list of image files -> [B, 3, H, W].
    transform = backbone.image_transform(IMAGE_SIZE)
    return torch.stack([transform(image=load_image(files.images_dir / n))["image"] for n in names])


def word_vectors(words):
    # One unit vector per word: its text vectors in every template, averaged -> [W, D].
    per_template = torch.stack([backbone.text_embeddings([format_prompt(t, w) for w in words])
                                for t in PROMPT_TEMPLATES])
    return F.normalize(per_template.mean(0), dim=-1)


def similarity_maps(patch_emb, text_emb):
    # [B, P, D] patch embeddings x [T, D] texts -> [B, T, h, w] cosine maps on the patch grid.
    similarity = patch_text_similarity(patch_emb.to(text_emb.device).float(), text_emb)
    return similarity.reshape(len(patch_emb), len(text_emb), *GRID).cpu()


def panel_grid(rows, column_titles, row_titles=()):
    # A grid of panels: RGB images as they are, boolean masks in grey, 2-D maps in colour.
    fig, axes = plt.subplots(len(rows), len(rows[0]), squeeze=False,
                             figsize=(1.9 * len(rows[0]) + 0.6, 1.9 * len(rows)))
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is None:
                ax.axis("off")
                continue
            panel = np.asarray(panel)
            if panel.ndim == 3 or panel.dtype == bool:
                ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            else:
                ax.imshow(panel, cmap="magma", interpolation="bilinear")
                ax.set_xlabel(f"{panel.min():.2f} .. {panel.max():.2f}", fontsize=7)
            if r == 0:
                ax.set_title(column_titles[c], fontsize=8)
        if r < len(row_titles):
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
    fig.tight_layout()
    return fig


# %%
if DATASET == "synthetic":
    WORDS = list(SHAPES)
    shown = [n for n in test_names if len(objects[n]) == 2][:3]
    row_titles = [", ".join(f"{o['colour']} {o['shape']}" for o in objects[n]) for n in shown]
else:
    WORDS = ["dog", "person", "grass", "water", "ball"]
    shown, row_titles = test_names[:3], ()

frozen_maps = similarity_maps(backbone.patch_embeddings(pixels(shown)), word_vectors(WORDS))
show(panel_grid([[load_image(files.images_dir / n), *maps.numpy()]
                 for n, maps in zip(shown, frozen_maps, strict=True)],
                ["image", *WORDS], row_titles))


# %%
def prompt_agreement(maps):
    # Mean correlation between the maps of different prompts on the same image (1 = identical).
    flat = maps.flatten(2)
    flat = F.normalize(flat - flat.mean(-1, keepdim=True), dim=-1)
    corr = flat @ flat.transpose(1, 2)                                   # [B, T, T]
    off_diagonal = ~torch.eye(maps.shape[1], dtype=torch.bool)
    return corr[:, off_diagonal].mean().item()


sample = test_names[:64]
sample_maps = similarity_maps(backbone.patch_embeddings(pixels(sample)), word_vectors(WORDS))
print(f"maps of different words on the same image correlate at {prompt_agreement(sample_maps):.2f}"
      f" on average ({len(sample)} test images, {len(WORDS)} words)")


# %% [markdown]
# Read the rows across. If the maps localised, the "circle" map would light up the circle and the
# "star" map the star, and the maps of different words on one image would differ. The printed
# correlation measures that: near 1, the maps of one image are copies of each other whatever the
# word, so they describe the patches, not the word.
#
# Nothing in CLIP's training asks for more. The loss only ever compares the *pooled* vector (a ViT's
# class token; for the course's CNN, the average of its feature-map cells)
# with captions. A single patch sent through the same projection head is an input the head never
# saw on its own, and its cosine with a caption is a by-product: it can be right where the pool
# happened to rely on that patch, and arbitrary elsewhere. The PACL paper shows that the patch
# tokens of CLIP ViT-B/16 are poorly aligned with text, which is the gap PACL closes. (In FAST mode the
# CLIP is nearly untrained and the maps are noise.) On the course's CLIP trained in full, expect a
# correlation well above 0.5: the maps of different words on one image are largely copies of each
# other.

# %% [markdown]
# ## 3 · PACL's compatibility function
#
# CLIP scores an image *x* against a text *y* with one cosine between two global vectors. PACL
# replaces that score by a *compatibility* built from the patches (PACL, Eq. 2-3). With
# *e_v(p_i)* the embedded patches and *e_t(y)* the text vector:
#
# 1. *s_i* = cos(*e_v(p_i)*, *e_t(y)*): how much patch *i* looks like the text;
# 2. *a* = softmax over the patches of *s*: attention weights that sum to one;
# 3. *v* = Σ *a_i* · *e_v(p_i)*: a text-specific summary of the image, made mostly of the patches
#    that resemble the text;
# 4. φ(*x*, *y*) = cos(*v*, *e_t(y)*).
#
# The contrastive loss stays CLIP's (each image must pick its text in the batch and vice versa); only
# the score inside it changes. The one trainable part is *e_v*, a small **vision embedder** applied to
# every frozen patch vector. To make the pooled *v* match the right text and not the others, the
# embedder has to make the patches that show the text's content resemble the text: patch-level
# alignment, learned from image-level pairs. Here is the function, for a batch of images and a set of
# texts at once:

# %%
def compatibility(patch_emb, text_emb):
    # patch_emb [B, P, D] (embedded patches), text_emb [T, D] -> [B, T]
    patches, texts = F.normalize(patch_emb, dim=-1), F.normalize(text_emb, dim=-1)
    s = torch.einsum("bpd,td->btp", patches, texts)            # 1. cosine of every patch
    a = s.softmax(dim=-1)                                      # 2. weights over the P patches
    v = torch.einsum("btp,bpd->btd", a, patch_emb)             # 3. weighted sum of the patches
    return torch.einsum("btd,td->bt", F.normalize(v, dim=-1), texts)   # 4. cosine with the text


example_patches = backbone.patch_embeddings(pixels(shown)).float()
example_texts = word_vectors(WORDS)
ours = compatibility(example_patches, example_texts)
tested = pacl_compatibility(example_patches, example_texts)
assert torch.allclose(ours, tested, atol=1e-5), (ours, tested)
print("inline compatibility == utils.pacl.pacl_compatibility, shape", tuple(tested.shape))


# %% [markdown]
# Both agree (the `assert` would stop the notebook otherwise). The course's version computes the
# same thing without ever building a `[B, T, P, D]` tensor, which for a batch of 256 images and
# texts with ViT-B/16's 196 patches would take 26 GB.
#
# **How sharp is the softmax over the patches?** Written as above, the softmax takes the cosines
# as they are. Cosines lie in [−1, 1], so two patches' weights can differ by a factor of at most
# e² ≈ 7.4, however the embedder is trained: the pooled *v* always keeps a good share of every
# patch, and with a few hundred patches it is close to their plain average. A *temperature* τ
# divides the cosines first (softmax of *s* / τ): at τ = 0.1 the factor can reach e²⁰. The
# temperature is the course's addition (`PACL(..., softmax_temperature=0.1)`); PACL's Eq. 2-3, as
# this course implements them, feed the cosines to the softmax as they are.
#
# A useful number for a set of weights is its **effective number of patches**, exp(entropy): all
# `P` for uniform weights, 1 for a single patch. Below, the weights of one text over one image's
# patches, on the frozen CLIP, without and with temperatures:

# %%
def effective_patches(weights):
    # exp(entropy) of weights over the last dimension: P when uniform, 1 on a single patch.
    return (-(weights * weights.clamp_min(1e-12).log()).sum(-1)).exp()


similarity = patch_text_similarity(example_patches, example_texts)                 # [B, T, P]
num_patches = similarity.shape[-1]
temperatures = {"plain cosines": 1.0, "τ = 0.1": 0.1, "τ = 0.03": 0.03}
fig, axes = plt.subplots(1, len(temperatures) + 1, figsize=(3.2 * (len(temperatures) + 1), 3.2))
axes[0].imshow(load_image(files.images_dir / shown[0]))
axes[0].set_title(f"image; text: {WORDS[0]!r}", fontsize=9)
for ax, (label, tau) in zip(axes[1:], temperatures.items(), strict=True):
    weights = (similarity / tau).softmax(-1)
    ax.imshow(weights[0, 0].reshape(GRID).cpu(), cmap="magma")
    ax.set_title(f"{label}: {effective_patches(weights[0, 0]):.0f} of {num_patches} patches",
                 fontsize=9)
for ax in axes:
    ax.axis("off")
fig.suptitle("softmax weights over the patches (frozen CLIP)", fontsize=10)
show(fig)
plain = similarity.softmax(-1)
print(f"plain cosines, every test image and word above: largest/smallest weight within one map "
      f"at most {(plain.amax(-1) / plain.amin(-1)).max():.2f} (bound e^2 = {math.e ** 2:.2f}); "
      f"effective patches {effective_patches(plain).min():.0f} to "
      f"{effective_patches(plain).max():.0f} of {num_patches}")


# %% [markdown]
# With plain cosines the weight map is nearly flat: whatever the text, almost every patch counts
# (the effective number printed in the first panel's title is close to all of them). PACL's loss
# then compares the text with something close to the *mean* patch, and the cheapest way to win is
# to make every patch describe the whole image, which is not what a segmenter needs. With τ = 0.1
# the weights can concentrate on the patches that match; much sharper (τ = 0.03) and a single patch
# decides, and its mistakes are not averaged out. Section 7 trains both ways and measures the
# difference.

# %% [markdown]
# ### Your turn (optional, ungraded): the weights of one text over one image's patches
#
# Write steps 1 and 2 of the compatibility for a single image and a single text, with the
# temperature: from the patches `[P, D]` and the text `[D]`, neither of unit length, return the `P`
# weights, the softmax over the patches of their cosines with the text divided by `temperature`.

# %%
def weights_over_patches(patches, text, temperature):
    # patches [P, D], text [D] -> [P] weights that sum to 1
    raise NotImplementedError  # your code here


passed = practice.check_patch_weights(weights_over_patches)


# %% [markdown]
# ### Your turn (optional, ungraded): how sharp can the softmax get?
#
# Whatever the embedder learns, two patches' weights can differ only so much. Write the largest
# possible ratio between the weights of two patches, as a function of the temperature (1 for plain
# cosines).

# %%
def largest_weight_ratio(temperature):
    # the most one patch can outweigh another, over all possible embeddings
    raise NotImplementedError  # your code here


passed = practice.check_weight_ratio(largest_weight_ratio)

# %% [markdown]
# ## 4 · What PACL trains on: phrases that name one region
#
# Think about what the softmax over the patches asks of a whole caption: "which patches match *a large red circle left of a small blue square*?" The honest answer
# is "the whole image", and the loss then teaches every patch to summarise the caption. A phrase
# that names one object, "red circle", has a real answer: the patches of the red circle. So the
# course trains on the **object phrases of each caption** (nouns with the words that describe them),
# each put into a CLIP-style template ("a photo of a red circle"), the same form that segmentation
# will use for class names in notebook 03. Training on these phrases *only*, without the captions,
# is the course's choice; section 7 measures it against training on the captions.
#
# One mechanism serves both datasets: `extract_phrases` looks a caption's words up in a vocabulary
# of object nouns (plurals undone) and of modifiers (colours, sizes, ...), and keeps each noun alone
# and with the modifiers right before it. Offline the vocabulary is the synthetic set's shapes,
# colours and sizes (`SHAPES_VOCABULARY`); on Flickr8k a curated list of common nouns and adjectives
# (`FLICKR_VOCABULARY`: no parser to download; its docstring lists what it misses). An image whose
# captions name nothing from the list keeps its captions.

# %%
vocabulary = SHAPES_VOCABULARY if DATASET == "synthetic" else FLICKR_VOCABULARY
name, captions = train_items[0]
for caption in captions:
    print(f"{caption!r}\n    -> {extract_phrases(caption, vocabulary)}")

rng = np.random.default_rng(SEED)
pacl_items = [(name, training_texts(captions, vocabulary, rng=rng))
              for name, captions in train_items]
name, texts = pacl_items[0]
print(f"\n{name}: {len(texts)} training texts, each phrase in one template drawn at random")
for text in texts:
    print("   ", text)
distinct = {text for _, texts in pacl_items for text in texts}
print(f"\n{len(pacl_items)} images, {sum(len(t) for _, t in pacl_items)} (image, text) pairs, "
      f"{len(distinct)} distinct texts")

# %% [markdown]
# Each training step pairs every image with one of its texts, drawn at random, so over the epochs
# an image is seen with each of its object phrases. Short texts such as "a photo of a circle" fit
# many images. The batches therefore carry a `positives` matrix (image *i*
# matches text *j* when the text is one of image *i*'s), as in notebook 01, so an image is never
# pushed away from a text that is true of it.

# %% [markdown]
# ## 5 · Cache once, then train the embedder
#
# The backbone is frozen, so its patch and text embeddings never change. `cache_features` runs it
# once over the images and texts and keeps the results on disk (float16, read through a memory
# map). Training never runs the backbone again: it reads the cache and runs only the small
# embedder. The cache's folder name carries a hash of the backbone (weights, tokenizer, image
# normalisation), the image names, the image size and the texts, so a different CLIP or text set
# never reuses a stale cache, and re-running this cell reuses a valid one at once.
#
# We cache the test split as well (its captions), for the evaluations below.

# %%
cache_dir = OUT_DIR / "features"
started = time.perf_counter()
train_cache = cache_features(backbone, files.images_dir, pacl_items, IMAGE_SIZE, cache_dir,
                             f"{DATASET}-train", num_workers=NUM_WORKERS)
test_cache = cache_features(backbone, files.images_dir, test_items, IMAGE_SIZE, cache_dir,
                            f"{DATASET}-test", num_workers=NUM_WORKERS)
print(f"{time.perf_counter() - started:.0f} s; train patches {train_cache.patch_emb.shape} "
      f"({train_cache.patch_emb.nbytes / 2**20:.0f} MiB), {len(train_cache.texts)} texts; "
      f"test patches {test_cache.patch_emb.shape}\n{train_cache.folder}")

# %% [markdown]
# The embedder is the paper's residual block: `Linear(x) + Linear(ReLU(Linear(x)))`. It starts as
# the identity (the residual branch's last layer at zero), so before training PACL scores exactly
# the frozen patches. Where it sits is the course's choice: it takes the projected patch
# embeddings, already in CLIP's joint space, so that the same code serves the course's CNN and
# ViT-B/16. The logit scale starts at 1/0.07, as in CLIP. `utils.train.fit` is the loop
# notebook 01 used; only the parameter groups and the loss function differ.

# %%
seed_everything(SEED)
pacl = PACL(EMBED_DIM, softmax_temperature=TEMPERATURE)
print(f"vision embedder: {count_parameters(pacl.vision_embedder):,} parameters (+1 logit scale); "
      f"the frozen CLIP has {count_parameters(backbone.model):,}")

started = time.perf_counter()
history = fit(pacl, pacl_parameter_groups(pacl, LR), pacl_feature_loader(train_cache, BATCH_SIZE),
              pacl_batch_loss, TrainConfig(epochs=EPOCHS, seed=SEED, eval_every=0))
pacl.eval()
print(f"{EPOCHS} epochs, {len(history.steps)} steps in {time.perf_counter() - started:.0f} s; "
      f"loss {history.steps[0]['loss']:.3f} -> {np.mean([s['loss'] for s in history.steps[-10:]]):.3f}"
      f" (ln {BATCH_SIZE} = {math.log(BATCH_SIZE):.3f}); logit scale "
      f"{history.steps[0]['logit_scale']:.1f} -> {pacl.logit_scale.item():.1f}")

# %%
show(plot_training_curves(history.steps))

# %% [markdown]
# - **Loss.** Compare its start with ln(batch size), printed above: that is the loss of a uniform
#   guess. On the frozen patches (the identity embedder) the compatibility tells the texts of a
#   batch apart little better than chance, so the first steps sit close to it. It should then fall
#   quickly and flatten; it stays well above zero, partly because several texts of a batch are
#   often true of one image and the target spreads over all of them.
# - **Learning rate.** A short warm-up, then a cosine decay to zero.
# - **Logit scale.** The learnt sharpness of the softmax over the batch; it rises as the
#   compatibilities become reliable enough to be trusted. In FAST mode (36 steps) none of the
#   curves has time to go far.

# %% [markdown]
# ## 6 · The maps, before and after
#
# Now the same kind of maps with the trained embedder (the cosine of each *embedded* patch with
# the text), next to the frozen CLIP's map for the same image and word. On the synthetic set the
# second column shows where the word is true, from `masks/` (each pixel's shape class) and
# `objects.json` (where each object is). Two kinds of words, both in the prompt templates: a shape
# ("circle") and a colour ("red shape").

# %%
test_patches = torch.from_numpy(np.array(test_cache.patch_emb))           # [N, P, D] float16
index_of = {name: i for i, name in enumerate(test_names)}


def frozen(patch_emb):
    return patch_emb.to(DEVICE).float()


@torch.no_grad()
def embedded(patch_emb):
    return pacl.embed_patches(patch_emb.to(DEVICE).float())


@functools.cache
def class_mask(name):
    return np.array(PILImage.open(dataset_root / "masks" / name))     # [H, W] shape class ids


def truth(name, shape=None, colour=None):
    # Boolean [H, W]: the visible pixels of the image's objects with this shape and/or colour.
    mask = class_mask(name)
    found = np.zeros(mask.shape, dtype=bool)
    for o in objects[name]:
        if shape in (None, o["shape"]) and colour in (None, o["colour"]):
            visible = mask == CLASS_NAMES.index(o["shape"])
            found |= shape_footprint(o["shape"], o["box"], mask.shape[0]) & visible
    return found


# %%
if DATASET == "synthetic":
    pairs = [(n, word, truth(n, **{kind: objects[n][0][kind]})) for n in shown
             for kind, word in (("shape", objects[n][0]["shape"]),
                                ("colour", f"{objects[n][0]['colour']} shape"))]
else:                                     # no masks: the second column stays empty
    pairs = [(n, word, None) for n in shown
             for word in (caption_phrases(dict(test_items)[n], vocabulary) or ["thing"])[:2]]

rows = []
for n, word, where in pairs:
    patches, text = test_patches[[index_of[n]]], word_vectors([word])
    rows.append([load_image(files.images_dir / n), where,
                 similarity_maps(frozen(patches), text)[0, 0].numpy(),
                 similarity_maps(embedded(patches), text)[0, 0].numpy()])
show(panel_grid(rows, ["image", "where it is true", "frozen CLIP", "after PACL"],
                [word for _, word, _ in pairs]))


# %% [markdown]
# What to look for: in the last column, the bright cells should sit inside the white region of the
# second column, and more tightly than in the third. The maps stay blurry whatever happens: each
# cell of the course CNN's 16 × 16 grid sees a wide window of the 64-pixel image. And PACL can only
# align what the frozen patches already encode: it trains a small head, not the encoder, so a word
# the backbone never learnt to recognise (compare its zero-shot accuracy in section 8) will not
# light up the right place however long the embedder trains. Three images are anecdotes; the next
# cell measures the same thing on every test image.
#
# **Localisation AUC.** For a map and the pixels where its word is true: the probability that a
# random pixel inside scores higher than a random pixel outside (maps bilinearly upsampled to the
# image). 1.0 is perfect, 0.5 is a map that knows nothing, and below 0.5 the map points at the wrong
# place. "Templated" words are averaged over the seven templates as above; the third row
# uses the dataset's own caption wording instead ("something red", one text, no templates).

# %%
def localisation_auc(score_map, inside):
    # Mann-Whitney AUC of a [H, W] map for the pixels `inside` against all others.
    ranks = score_map.flatten().argsort().argsort().double() + 1
    inside = torch.as_tensor(inside).flatten()
    n_in, n_out = inside.sum().item(), (~inside).sum().item()
    return ((ranks[inside].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out)).item()


def mean_auc(embed, text_emb, targets):
    # Mean AUC over every test image and every target (a dict for truth()) present in it.
    maps = F.interpolate(similarity_maps(embed(test_patches), text_emb), size=IMAGE_SIZE,
                         mode="bilinear", align_corners=False)                 # [N, T, H, W]
    aucs = [localisation_auc(maps[i, t], inside) for i, n in enumerate(test_names)
            for t, target in enumerate(targets) if (inside := truth(n, **target)).any()]
    return float(np.mean(aucs))


localisation = {}
if DATASET == "synthetic":
    kinds = {
        "shape, templated": (word_vectors(SHAPES), [{"shape": s} for s in SHAPES]),
        "colour, templated": (word_vectors([f"{c} shape" for c in COLOURS]),
                              [{"colour": c} for c in COLOURS]),
        "colour, 'something red'": (backbone.text_embeddings([f"something {c}" for c in COLOURS]),
                                    [{"colour": c} for c in COLOURS]),
    }
    for kind, (text_emb, targets) in kinds.items():
        localisation[kind] = {"frozen CLIP": mean_auc(frozen, text_emb, targets),
                              "PACL": mean_auc(embedded, text_emb, targets)}
    print(format_table(["words", "frozen CLIP", "after PACL"],
                       [(kind, v["frozen CLIP"], v["PACL"]) for kind, v in localisation.items()]))
else:
    print("Flickr8k has no masks, so localisation is not scored here.")


# %% [markdown]
# Read each row from left to right: the AUC of the frozen patches, then after PACL. A gain means
# the embedder moved the maps towards the right pixels; a value below 0.5 means the map points at
# the wrong place (often the background). The third row uses a wording PACL's object prompts never
# had (section 4 puts every object phrase in a template, and "something red" names no object):
# compare it with the templated colour row to see how much the prompt's form matters, which is why
# notebook 03 builds segmentation prompts from the same templates. (In FAST mode the backbone is
# barely trained: any gain there comes from the embedder alone.)
#
# On the course's CLIP trained in full, look at the shape row first: the frozen CLIP's shape maps
# tend to point at the wrong place (below 0.5: the background lights up more than the shape), and
# that is the row PACL has the most to fix. Keep in mind for notebook 03 that an AUC ranks the
# pixels of *one* word's map, while a mask has to compare the words with each other, pixel by
# pixel, and decide where there is nothing at all.

# %% [markdown]
# ## 7 · What the texts and the temperature change
#
# Sections 3 and 4 made two choices of the course: object phrases instead of whole captions, and
# a softmax temperature of 0.1 instead of plain cosines. Here PACL is trained twice more on the
# same frozen features, for the same epochs, changing one thing at a time, and each result is
# measured the same way:
#
# - **captions, plain cosines**: PACL's compatibility (Eq. 2-3) trained on the captions themselves;
# - **phrases, plain cosines**: this notebook's texts, the softmax of Eq. 2 without a temperature;
# - **phrases, τ = 0.1**: the embedder trained in section 5.
#
# Two measures: the localisation AUC of section 6 (shape and colour words), and how many patches
# PACL's softmax actually pools for a phrase, the effective number of section 3 (with the trained
# embedder and each model's own temperature). Offline only: Flickr8k has no masks to score
# against.

# %%
@torch.no_grad()
def effective_pooled_patches(model, text_emb):
    # Mean effective number of patches in PACL's softmax, over test images and texts.
    texts = model.embed_texts(text_emb.to(DEVICE).float())
    counts = [effective_patches(patch_weights(model.embed_patches(frozen(test_patches[i:i + 100])),
                                              texts, model.softmax_temperature)).cpu()
              for i in range(0, len(test_patches), 100)]
    return torch.cat(counts).mean().item()


def train_variant(items, temperature, key):
    cache = cache_features(backbone, files.images_dir, items, IMAGE_SIZE, cache_dir,
                           f"{DATASET}-train-{key}", num_workers=NUM_WORKERS, progress=False)
    seed_everything(SEED)
    model = PACL(EMBED_DIM, softmax_temperature=temperature)
    fit(model, pacl_parameter_groups(model, LR), pacl_feature_loader(cache, BATCH_SIZE),
        pacl_batch_loss, TrainConfig(epochs=EPOCHS, seed=SEED, eval_every=0))
    return model.eval()


recipes = {}
if COMPARE_RECIPES:
    caption_items = [(name, [normalise_text(c) for c in captions]) for name, captions in train_items]
    recipes = {"captions,\nplain cosines": train_variant(caption_items, None, "captions"),
               "phrases,\nplain cosines": train_variant(pacl_items, None, "phrases"),
               f"phrases,\nτ = {TEMPERATURE}": pacl}
    phrase_emb = word_vectors([f"{c} {s}" for c in COLOURS for s in SHAPES])
    recipe_scores = {}
    for label, model in recipes.items():
        def embed(patch_emb, model=model):
            with torch.no_grad():
                return model.embed_patches(frozen(patch_emb))
        recipe_scores[label] = {kind: mean_auc(embed, *kinds[kind])
                                for kind in ("shape, templated", "colour, templated")}
        recipe_scores[label]["pooled patches"] = effective_pooled_patches(model, phrase_emb)
    print(format_table(["recipe", "AUC shape", "AUC colour", "patches pooled"],
                       [(label.replace("\n", " "), *row.values())
                        for label, row in recipe_scores.items()]))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    labels = list(recipe_scores)
    for j, kind in enumerate(("shape, templated", "colour, templated")):
        axes[0].bar(np.arange(len(labels)) + (j - 0.5) * 0.38,
                    [recipe_scores[r][kind] for r in labels], 0.38, label=kind.split(",")[0])
    axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes[0].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[0].set(ylim=(0, 1), title="localisation AUC after PACL (0.5: no idea)")
    axes[0].legend(fontsize=8)
    axes[1].bar(range(len(labels)), [recipe_scores[r]["pooled patches"] for r in labels],
                color="tab:purple")
    axes[1].axhline(num_patches, color="grey", linestyle="--", linewidth=1)
    axes[1].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[1].set(title=f"patches pooled per phrase (of {num_patches})")
    fig.tight_layout()
    show(fig)
else:
    print("Flickr8k has no masks: the recipes are compared offline, on the synthetic set.")


# %% [markdown]
# What to look for, from left to right:
#
# - **Captions, plain cosines.** The pooling is close to an average of all patches (right panel:
#   nearly every patch counts), so the loss asks each patch for a summary of the whole caption.
#   Expect maps that localise little or nothing: AUCs near 0.5, or below it where the background
#   has learnt to carry the summary.
# - **Phrases, plain cosines.** The texts now name one region, so "which patches match?" has an
#   answer, and this is the change that moves the maps most: expect the AUCs to jump. The softmax
#   is still nearly flat.
# - **Phrases, τ = 0.1.** The pooling concentrates on far fewer patches, and the maps gain a little
#   more. The larger gain shows in notebook 03: there a mask has to decide, pixel by pixel, whether
#   any class matches at all, and a PACL trained with a sharper softmax answers that better (the
#   README's results compare the recipes on segmentation).
#
# In FAST mode the models train for a few dozen steps and the bars can come out in any order; run
# the notebook in full to see the comparison on the course's CLIP trained in full.

# %% [markdown]
# ## 8 · Image-level tasks: does PACL replace CLIP?
#
# PACL's compatibility is also an image-text score, so it can do what CLIP does: zero-shot
# classification and retrieval. We compare three scores on the test split:
#
# - **CLIP**: the cosine of CLIP's own image vector with the text (notebook 01's score);
# - **compatibility, frozen patches**: PACL's function (with its temperature) on the untrained
#   (identity) embedder;
# - **PACL**: the compatibility with the trained embedder.
#
# Zero-shot classification asks, for the test images with exactly one shape, "which shape?" (5
# classes) and "which colour?" (6 classes), with the templated words of section 6. Retrieval is
# recall@K over all test captions, with the positives matrix of notebook 01 (a caption text matches
# every image that has it among its captions).

# %%
@torch.no_grad()
def clip_image_embeddings(items):
    loader = DataLoader(ImageCaptionDataset(files.images_dir, items,
                                            backbone.image_transform(IMAGE_SIZE), caption_index=0),
                        batch_size=128, num_workers=NUM_WORKERS)
    return torch.cat([backbone.image_embeddings(batch["image"]).float().cpu() for batch in loader])


@torch.no_grad()
def compatibilities(embed, names, text_emb, chunk=50):
    # [images, texts] PACL compatibilities with the temperature PACL trained with, a chunk of
    # images at a time (bounded memory).
    rows = [index_of[n] for n in names]
    text_emb = text_emb.to(DEVICE).float()
    return torch.cat([pacl_compatibility(embed(test_patches[rows[i:i + chunk]]), text_emb,
                                         pacl.softmax_temperature).cpu()
                      for i in range(0, len(rows), chunk)])


image_emb = clip_image_embeddings(test_items)                                     # [N, D]
scorers = {
    "CLIP": lambda names, text_emb: image_emb[[index_of[n] for n in names]] @ text_emb.cpu().T,
    "compatibility, frozen patches": lambda names, t: compatibilities(frozen, names, t),
    "PACL": lambda names, t: compatibilities(embedded, names, t),
}

# %%
results = {system: {} for system in scorers}
if DATASET == "synthetic":
    single = [n for n in test_names if len(objects[n]) == 1]
    for task, labels, words in (("zero-shot shape", SHAPES, SHAPES),
                                ("zero-shot colour", list(COLOURS), [f"{c} shape" for c in COLOURS])):
        answer = torch.tensor([list(labels).index(objects[n][0][task.split()[-1]]) for n in single])
        class_emb = word_vectors(words)
        for system, score in scorers.items():
            results[system][task] = (score(single, class_emb).argmax(1) == answer).float().mean().item()

captions = [c for _, caps in test_items for c in caps]
text_row = {text: i for i, text in enumerate(test_cache.texts)}
caption_emb = torch.from_numpy(np.array(test_cache.text_emb)).float()[
    [text_row[c] for c in captions]]                                                # [C, D]
positives = caption_positives([caps for _, caps in test_items], captions)           # [C, N]
for system, score in scorers.items():
    similarity = score(test_names, caption_emb)                                     # [N, C]
    for k in (1, 5):
        results[system][f"text->image R@{k}"] = recall_at_k(similarity.T, positives, [k])[k]
        results[system][f"image->text R@{k}"] = recall_at_k(similarity, positives.T, [k])[k]

columns = list(results["CLIP"])
print(format_table(["", *columns], [(s, *(results[s][c] for c in columns)) for s in results]))
if DATASET == "synthetic":
    print(f"\nchance: shape {1 / len(SHAPES):.3f}, colour {1 / len(COLOURS):.3f} "
          f"({len(single)} single-shape test images)")

# %%
panels = 1 + bool(localisation)
fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels + 2, 3.6), squeeze=False,
                         gridspec_kw={"width_ratios": [1, 2.2][-panels:]})
if localisation:
    ax, kinds = axes[0, 0], list(localisation)
    for j, system in enumerate(("frozen CLIP", "PACL")):
        ax.bar(np.arange(len(kinds)) + (j - 0.5) * 0.38, [localisation[k][system] for k in kinds],
               0.38, label=system)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(kinds)), [k.replace(", ", ",\n") for k in kinds], fontsize=8)
    ax.set(ylim=(0, 1), title="localisation AUC (0.5: no idea)")
    ax.legend(fontsize=8, loc="upper left")
ax = axes[0, -1]
for j, system in enumerate(results):
    ax.bar(np.arange(len(columns)) + (j - 1) * 0.27, [results[system][c] for c in columns], 0.27,
           label=system)
ax.set_xticks(range(len(columns)), columns, rotation=25, ha="right", fontsize=8)
ax.set(ylim=(0, 1), title="image-level tasks (test split)")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
fig.tight_layout()
show(fig)

# %% [markdown]
# How to read it:
#
# - **Left, localisation.** The table of section 6 as bars; the dashed line is a map that knows
#   nothing.
# - **Right, image level.** Three scores of the same images against the same texts. CLIP's own
#   image vector is what CLIP was trained for, so expect it to lead at retrieval. The compatibility
#   on frozen patches is what PACL starts from: if its maps are near copies of each other (section
#   2), it hardly tells captions apart. (The paper, with OpenAI's far larger backbone and training
#   on captions, reports that PACL's score even improves zero-shot classification over CLIP's
#   across twelve datasets.)
# - **Zero-shot** shows what the backbone knows: no head trained on frozen features adds a concept
#   the backbone does not encode, so where CLIP is near chance, PACL will be too.
#
# PACL does not aim to replace CLIP's image-level score: it adds a patch-level one. On the course's
# CLIP trained in full, expect the trained embedder to match CLIP at zero-shot classification,
# whose prompts are the templated words it trained on, and to stay far behind CLIP at retrieval:
# this PACL only ever saw short object phrases, and retrieval queries are whole captions with
# positions and relations. That is the price of section 4's choice of texts. Training on the
# captions as well (`with_captions=True`) is the trade to try; on the course's CLIP it cost
# segmentation quality.

# %% [markdown]
# ## 9 · Save the embedder for notebook 03
#
# `save_pacl` writes the embedder's weights (safetensors), its configuration and a `meta.json` into
# one folder, atomically (built under a temporary name, then renamed). `meta` records which frozen
# CLIP it belongs to, including the backbone's `cache_key` (a hash of its weights): notebook 03 can
# pass the backbone to `load_pacl`, which refuses an embedder trained on another CLIP.

# %%
meta = {"backbone": BACKBONE, "source": source, "backbone_key": backbone.cache_key,
        "dataset": DATASET, "fast": FAST, "image_size": IMAGE_SIZE, "grid_shape": list(GRID),
        "epochs": EPOCHS, "localisation_auc": localisation, "image_level": results}
pacl_folder = save_pacl(OUT_DIR / "pacl", pacl, meta)
(OUT_DIR / "history.json").write_text(json.dumps(history.to_dict()))
(OUT_DIR / "metrics.json").write_text(json.dumps(
    {"localisation_auc": localisation, "image_level": results}, indent=2))

reloaded, reloaded_meta = load_pacl(pacl_folder, device=DEVICE, backbone=backbone)
probe = test_patches[:4].to(DEVICE).float()
assert torch.allclose(reloaded.embed_patches(probe), pacl.embed_patches(probe))
print(f"saved {sorted(p.name for p in pacl_folder.iterdir())} to {pacl_folder}; reloaded and checked")

# %% [markdown]
# ## What PACL changes, and what it does not
#
# - **It changes where a word lights up.** A small embedder (about 50,000 parameters for D = 128),
#   trained on image-text pairs without a single mask, reshapes the patch maps: section 6 measures
#   by how much, word kind by word kind. Notebook 03 turns such maps into segmentation masks.
# - **It does not add knowledge the backbone lacks.** Everything PACL aligns must already be in the
#   frozen patch features. The paper's segmentation results come from OpenAI's ViT-B/16, trained on
#   400 million image-text pairs, whose patches encode far more than the course's small CLIP.
# - **It is an addition, not a replacement.** For whole-image tasks CLIP's own image vector remains
#   the score it was trained to be (section 8).
# - **It is cheap.** Both encoders stay frozen, so their features are computed once and cached;
#   training touches only the cache and the small embedder.
#
# Things to try: train longer or with another learning rate (`EPOCHS`, `LR`); set `TEMPERATURE`
# to `None` (plain cosines) or 0.03 and watch section 7's bars; train on the captions as well as on
# the phrases (`training_texts(..., with_captions=True)`); or give notebook 01 more epochs so that
# its CLIP learns shapes better, and see whether PACL's shape maps follow.
