# %% [markdown]
# # 01 · CLIP from scratch
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/clip-pacl/clip-pacl/blob/main/notebooks/01_clip_from_scratch.ipynb)
#
# To see what it shows before running anything: [this notebook run in full offline](executed/01_clip_from_scratch.ipynb),
# with every output and figure, on a 2-core CPU.
#
# CLIP (Radford et al., 2021, *Learning Transferable Visual Models From Natural Language
# Supervision*) trains an image encoder and a text encoder together, so that an image and a caption
# that describes it end up close in one shared space. This notebook builds it from the loss up and
# trains it. On the way you will:
#
# 1. look at the data and at what a caption becomes for the model (tokens);
# 2. build the two encoders and their projection heads, and follow one batch through them;
# 3. write CLIP's contrastive loss in a few lines and check it against the course's tested version;
# 4. train, and watch a batch's similarity matrix go from noise to a bright diagonal;
# 5. measure retrieval (recall@K) in both directions;
# 6. search images with free text and rank captions for an image;
# 7. classify images *zero-shot* with prompts;
# 8. look at what the model gets wrong, and why.
#
# **Two ways to run it.** The parameters cell picks one for you.
#
# | | offline (a laptop CPU) | Google Colab (GPU runtime) |
# |---|---|---|
# | data | the course's synthetic *captioned shapes*, generated on first run | Flickr8k: 8,091 photos, 5 captions each (~1 GB download) |
# | image encoder | a tiny CNN trained from scratch | ResNet-50, ImageNet-pretrained |
# | text encoder | a 2-layer DistilBERT, WordPiece vocabulary learnt from the captions | DistilBERT, pretrained |
#
# Both runs execute the same cells: only the parameters differ. Offline, the full run trains for
# several minutes on a laptop CPU (longer when the CPU is busy with other work). Setting the
# environment variable `CLIP_PACL_FAST=1` turns on FAST mode, a smoke run of a minute or two on a
# small synthetic set. Its numbers stay close to chance; it only shows that every step works.
#
# The trained model is saved to `outputs/01_clip/clip`; notebook 02 (PACL) starts from it.

# %% [markdown]
# ## 0 · Set-up
#
# On Colab this clones the course, installs its requirements and the course package itself.
# `requirements.txt` holds lower bounds that Colab's own torch, torchvision and ipywidgets already
# meet, so nothing of Colab's is reinstalled. Locally it only checks that the package is installed
# (`make setup` installs it into `.venv`).

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
import json
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Image, display
from torch.utils.data import DataLoader

from utils.course import practice
from utils.course.notebook import (
    IN_COLAB,
    count_parameters,
    data_dir,
    fast_mode,
    format_table,
    outputs_dir,
    pick_device,
    repo_root,
    show,
    synthetic_dataset,
)
from utils.data import (
    CaptionCollator,
    ImageCaptionDataset,
    build_transform,
    load_image,
    load_pretrained_tokenizer,
    load_split,
    locate_dataset,
    train_wordpiece_tokenizer,
)
from utils.evaluation import embed_split, embed_texts
from utils.losses import clip_batch_loss, clip_loss
from utils.models import CLIP, CLIPConfig, clip_parameter_groups, save_clip
from utils.plots.clip import (
    caption_ranking,
    confusion_matrix,
    image_grid,
    plot_retrieval_gallery,
    plot_similarity_matrix,
    plot_training_curves,
)
from utils.sources.flickr8k import FLICKR8K_ARCHIVES, FLICKR8K_BASE_URL, prepare_flickr8k
from utils.sources.synthetic import COLOURS, SHAPES
from utils.train import TrainConfig, fit, seed_everything

# %% [markdown]
# ### Parameters
#
# Everything a run decides is in the next cell. The defaults: Flickr8k with pretrained encoders on
# Colab, the synthetic set with tiny encoders elsewhere, FAST mode (tiny encoders, two epochs) when
# `CLIP_PACL_FAST=1`. `FLICKR8K_URL` can point at a mirror of the two archives. Data goes
# to `data/` and results to `outputs/01_clip/` under the repository, or wherever the environment
# variables `CLIP_PACL_DATA` and `CLIP_PACL_OUTPUTS` point.

# %% tags=["parameters"]
FAST = fast_mode()                        # CLIP_PACL_FAST=1: tiny encoders, two epochs
DATASET = "flickr8k" if IN_COLAB else "synthetic"
FLICKR8K_URL, FLICKR8K_MD5S = FLICKR8K_BASE_URL, FLICKR8K_ARCHIVES   # where Flickr8k comes from

if DATASET == "flickr8k" and not FAST:    # Colab: pretrained encoders, fine-tuned on photos
    IMAGE_ENCODER, TEXT_ENCODER, PRETRAINED = "resnet50", "distilbert", True
    IMAGE_SIZE, EMBED_DIM, MAX_LENGTH, VOCAB_SIZE = 224, 256, 48, None
    CNN_WIDTH = None                      # only the tiny CNN has a width to choose
    EPOCHS, BATCH_SIZE, DROPOUT = 5, 64, 0.1
    CAPTIONS_PER_IMAGE = 1                # the Colab recipe, as measured (section 7)
    ENCODER_LR, HEAD_LR, WEIGHT_DECAY = 3e-5, 1e-3, 0.05   # gentle on pretrained weights
else:                                     # offline, or FAST: everything trained from scratch
    IMAGE_ENCODER, TEXT_ENCODER, PRETRAINED = "tiny_cnn", "tiny_distilbert", False
    IMAGE_SIZE, EMBED_DIM, MAX_LENGTH, VOCAB_SIZE = 64, 128, 48, 400
    CNN_WIDTH = 48                        # channels of the tiny CNN, as `make demo`
    EPOCHS, BATCH_SIZE, DROPOUT = (2 if FAST else 20), 64, 0.0   # as `make demo`
    CAPTIONS_PER_IMAGE = 2                # texts per image in a training batch (section 7)
    ENCODER_LR, HEAD_LR, WEIGHT_DECAY = 2e-3, 2e-3, 0.05

SEED = 0
NUM_WORKERS = 2 if IN_COLAB else 0        # Colab: 2 vCPUs feed the GPU; a laptop CPU trains instead
DEVICE = pick_device()                    # CUDA when there is a GPU; AMP then switches on in fit()
DATA_DIR = data_dir()                     # $CLIP_PACL_DATA or <repo>/data
OUT_DIR = outputs_dir("01_clip")          # $CLIP_PACL_OUTPUTS/01_clip or <repo>/outputs/01_clip

print(f"dataset={DATASET}  fast={FAST}  device={DEVICE}  encoders={IMAGE_ENCODER}+{TEXT_ENCODER}"
      f"  epochs={EPOCHS}  batch={BATCH_SIZE}\noutputs -> {OUT_DIR}")

# %% [markdown]
# ## 1 · The idea: learning from captions
#
# A classic image classifier learns from a fixed list of labels: 1,000 ImageNet classes, each image
# tagged with one. CLIP learns from the sentences people write about images instead. That changes
# three things:
#
# - **The supervision is free and rich.** Captions come with images (alt text, photo descriptions),
#   so nobody has to label anything, and a caption says more than a class name: what is there, what
#   colour, where, doing what.
# - **The task is to *match*, not to name.** Generating the exact caption is hard and mostly about
#   wording. CLIP solves an easier, better-posed problem: in a batch of *N* images and their *N*
#   captions, which caption belongs to which image?
# - **The output space is open.** The model learns to compare an image with *any* text. To use it
#   for a new task you write that task down in words.
#
# Two encoders map each side into the same *D*-dimensional space. After L2-normalisation, the dot
# product of an image vector and a caption vector is their cosine similarity. For a batch this gives
# an *N × N* matrix whose diagonal holds the true pairs (the figure below, drawn by
# `scripts/draw_figures.py`). The loss asks every row and every column to pick out its diagonal
# entry. Each batch so brings *N² − N* negative pairs for free.
#
# **Zero-shot** means solving a task with zero labelled examples of it. To classify, write one
# sentence per class ("a photo of a dog", "a photo of a cat"), embed the sentences and pick the class
# whose sentence is closest to the image. No classifier is trained: the text encoder *writes* the
# classifier's weights.

# %%
display(Image(filename=str(repo_root() / "Images" / "clip_architecture.png"), width=900))

# %% [markdown]
# Read the figure left to right. Each side has its own encoder (a CNN or a ViT for images, a
# Transformer for text) and its own linear projection into the shared space. The matrix on the right
# holds all *N²* dot products of the batch. Training raises the green diagonal and lowers the rest.
# The learned scale *s* (a temperature 1/*s*) decides how sharp the softmax over each row and column
# is.

# %% [markdown]
# ## 2 · The data
#
# Both datasets sit on disk in the same layout: an image folder, a `captions.txt` with five captions
# per image, and split files listing the train, dev and test images. So one loader serves both.
#
# - **Captioned shapes** (offline): 64 × 64 images with one to three flat shapes (circle, square,
#   triangle, star, cross) in six colours and two sizes. Each image has five true captions, from full
#   detail ("a large red circle to the left of a small blue star") down to colours only
#   ("something red and something blue"). An `objects.json` file records what is in each image, so
#   we can check the model's answers exactly.
# - **Flickr8k** (Colab): 8,091 photos of people and animals, each described by five different
#   people; the official split has 6,000 / 1,000 / 1,000 images.

# %%
if DATASET == "flickr8k":
    # Downloads the two official archives once (MD5-checked, resumable) and unpacks them. Have the
    # Kaggle copy (Images/ + captions.txt) already? Use utils.sources.flickr8k.use_kaggle_copy(path).
    dataset_root = prepare_flickr8k(DATA_DIR / "flickr8k", base_url=FLICKR8K_URL,
                                    archives=FLICKR8K_MD5S)
else:
    dataset_root = synthetic_dataset(FAST, image_size=IMAGE_SIZE)  # generated once, then reused

files = locate_dataset(dataset_root)
train_items, dev_items, test_items = (load_split(files, s) for s in ("train", "dev", "test"))
captions_of = {name: captions for name, captions in train_items + dev_items + test_items}
print(f"{dataset_root}\n{len(train_items)} / {len(dev_items)} / {len(test_items)} images "
      f"(train / dev / test), {sum(len(c) for _, c in train_items)} training captions")

# %%
examples = train_items[:8]
show(image_grid([load_image(files.images_dir / name) for name, _ in examples],
                ["\n".join(captions) for _, captions in examples], columns=4, width=38))

# %% [markdown]
# Every image has five captions, and they differ in detail. On the synthetic set the first two
# name sizes, colours and positions and usually fit only their own image. The last three are short
# and worded in a fixed order (colours and shapes; shapes with counts; colours only), so two images
# with the same content get exactly the same short captions, and "a circle" or "something red" fit
# many images. Flickr8k's five captions come from five people and mention different things (the
# dog, the grass, the ball). During training each image is shown with **one caption drawn at random
# each epoch**, so the model meets all five.

# %% [markdown]
# ### What the text encoder sees: tokens
#
# A tokenizer turns a caption into a sequence of ids. Offline, we learn a WordPiece vocabulary from
# the training captions (400 pieces are plenty for this small language; it takes well under a
# second). On Colab we use DistilBERT's own tokenizer, so that the pretrained weights keep their
# meaning. Either way every caption starts with `[CLS]`. The text encoder's output at that position
# stands for the whole caption.

# %%
if PRETRAINED:
    tokenizer = load_pretrained_tokenizer()          # distilbert-base-uncased (downloads once)
else:
    tokenizer = train_wordpiece_tokenizer(
        [c for _, captions in train_items for c in captions], vocab_size=VOCAB_SIZE)

example = train_items[0][1][0]
print(example, "->", tokenizer.convert_ids_to_tokens(tokenizer(example)["input_ids"]))
lengths = np.array([len(ids) for ids in
                    tokenizer([c for _, caps in train_items for c in caps])["input_ids"]])
fig, ax = plt.subplots(figsize=(6.5, 2.8))
ax.hist(lengths, bins=np.arange(lengths.min(), lengths.max() + 2) - 0.5, color="#5b8fd6")
ax.axvline(MAX_LENGTH + 0.5, color="#d62728", linestyle="--", label=f"MAX_LENGTH = {MAX_LENGTH}")
ax.set(xlabel="tokens per caption ([CLS] and [SEP] included)", ylabel="captions",
       title="caption lengths (training split)")
ax.legend()
show(fig)
print(f"median {np.median(lengths):.0f} tokens; {np.mean(lengths > MAX_LENGTH):.2%} of the "
      f"captions are longer than {MAX_LENGTH} and get cut")

# %% [markdown]
# The histogram tells us how long a sequence the text encoder must handle. Batches are padded only
# to their longest caption, and captions longer than `MAX_LENGTH` are cut during training. The
# printed share says how many lose their end that way: none of the synthetic captions, whose longest
# (three shapes and their relations) stay well below 48 tokens.

# %% [markdown]
# ## 3 · Batches
#
# A training item is an image (resized to `IMAGE_SIZE`, lightly augmented, normalised) and one of its
# captions. The augmentation is chosen to keep captions true: a mild crop and a little brightness and
# contrast, but no flips (they would swap "left" and "right") and no hue shifts (they would change
# "red").
#
# The collator stacks the images, tokenizes the captions and, given every image's captions, adds a
# `positives` matrix: image *i* and caption *j* of the batch are a true pair when caption *j* is, word
# for word, one of image *i*'s captions. On the synthetic set a short caption such as "a circle" fits
# many images. Treating those as negatives would teach the model that a circle is not a circle.
#
# On Colab, decoding 6,000 JPEGs every epoch would keep the GPU waiting on two vCPUs, so the training
# images are resized once into one array on disk (`cache_image_array`) and read from there.

# %%
train_transform = build_transform(IMAGE_SIZE, train=True, seed=SEED)
if DATASET == "flickr8k":
    from utils.storage.image_cache import ArrayImageCaptionDataset, cache_image_array

    array = cache_image_array(files.images_dir, [name for name, _ in train_items],
                              DATA_DIR / "flickr8k_cache" / f"train_{IMAGE_SIZE}.npy", IMAGE_SIZE)
    train_set = ArrayImageCaptionDataset(array, train_items, train_transform)
else:
    train_set = ImageCaptionDataset(files.images_dir, train_items, train_transform)

def make_train_loader(captions_per_image=1):
    return DataLoader(
        train_set, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, num_workers=NUM_WORKERS,
        persistent_workers=NUM_WORKERS > 0, pin_memory=DEVICE.type == "cuda",
        collate_fn=CaptionCollator(tokenizer, MAX_LENGTH,
                                   captions_of_images=[captions for _, captions in train_items],
                                   captions_per_image=captions_per_image))


train_loader = make_train_loader()
batch = next(iter(train_loader))
print(format_table(["key", "value"], [
    (key, f"{value.dtype} {tuple(value.shape)}" if torch.is_tensor(value) else f"{len(value)} strings")
    for key, value in batch.items()]))

# %%
positives = batch["positives"]
extra = (positives & ~torch.eye(len(positives), dtype=torch.bool)).nonzero().tolist()
print(f"{len(extra)} off-diagonal pairs of this batch are true pairs as well")
for i, j in extra[:3]:
    print(f"  caption {j} {batch['captions'][j]!r} is also one of image {i}'s captions")

# %% [markdown]
# ## 4 · Encoders and projection heads
#
# - The **image encoder** turns an image into a grid of feature vectors (one per spatial cell:
#   the "patches" that notebook 02 aligns with text) and averages the grid into one vector. Offline
#   it is a small CNN with a 16 × 16 grid of 48-d features at 64 px; on Colab, ResNet-50 with a 7 × 7
#   grid of 2048-d features at 224 px.
# - The **text encoder** is DistilBERT (2 layers of width 128 offline, the real 6 × 768 model on
#   Colab). A caption is represented by the hidden state at its `[CLS]` token.
# - Each side has a **projection head** into the shared space of `EMBED_DIM` dimensions: a linear
#   map, plus a small residual MLP and a LayerNorm. CLIP itself uses only the linear map; the extra
#   MLP gives a pretrained encoder's features some room to adapt.
# - One learnable number, the **logit scale** *s*, starts at 1/0.07 ≈ 14.3 and is capped at 100
#   (CLIP paper, Sec. 2.5).

# %%
seed_everything(SEED)
model = CLIP(CLIPConfig(
    image_encoder=IMAGE_ENCODER, text_encoder=TEXT_ENCODER, pretrained=PRETRAINED,
    image_size=IMAGE_SIZE, embed_dim=EMBED_DIM, max_length=MAX_LENGTH, dropout=DROPOUT,
    vocab_size=None if PRETRAINED else len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    **({} if CNN_WIDTH is None else {"cnn_width": CNN_WIDTH}),
)).to(DEVICE)

parts = ["image_encoder", "image_projection", "text_encoder", "text_projection"]
print(format_table(["part", "parameters"],
                   [(p, f"{count_parameters(getattr(model, p)):,}") for p in parts]
                   + [("logit scale", "1"), ("total", f"{count_parameters(model):,}")]))

# %% [markdown]
# Now one batch through each stage. The model is in evaluation mode here, so dropout is off and the
# numbers are repeatable.

# %%
model.eval()
with torch.no_grad():
    images = batch["images"].to(DEVICE)
    input_ids, attention_mask = batch["input_ids"].to(DEVICE), batch["attention_mask"].to(DEVICE)
    patch_features = model.image_encoder.patch_tokens(images)     # [B, P, C]
    image_features = model.image_encoder(images)                  # [B, C]: the grid, averaged
    image_emb = model.image_projection(image_features)            # [B, D]
    text_features = model.text_encoder(input_ids, attention_mask) # [B, H]: the [CLS] state
    text_emb = model.text_projection(text_features)               # [B, D]

print(format_table(["stage", "shape"], [
    ("images", tuple(images.shape)),
    ("image encoder: feature grid", tuple(patch_features.shape)),
    ("image encoder: pooled", tuple(image_features.shape)),
    ("image projection", tuple(image_emb.shape)),
    ("token ids", tuple(input_ids.shape)),
    ("text encoder: [CLS] state", tuple(text_features.shape)),
    ("text projection", tuple(text_emb.shape)),
]))
print(f"norm of the first projected image vector: {image_emb[0].norm():.2f} "
      f"(sqrt(D) = {math.sqrt(EMBED_DIM):.2f}); normalising makes it 1")


# %% [markdown]
# Both sides end in vectors of the same size *D*, which is all the loss needs: it never looks inside
# the encoders. Straight out of the projection a vector's length is set by the LayerNorm (close to
# √*D*), not by the content; dividing by the length leaves only the direction, and the dot product of
# two unit vectors is their cosine similarity, between −1 and 1.

# %% [markdown]
# ## 5 · The loss, in a few lines
#
# Here is CLIP's loss written out (the paper's Figure 3, in PyTorch). For *N* pairs:
#
# 1. normalise both sets of embeddings to unit length;
# 2. `logits = s * I @ T.T`, an *N × N* matrix: row *i* scores image *i* against every caption;
# 3. the right answer for row *i* is column *i*: `labels = arange(N)`;
# 4. cross-entropy over the rows (each image picks its caption) and over the columns (each caption
#    picks its image), averaged.

# %%
def contrastive_loss(image_emb, text_emb, logit_scale):
    image_emb = F.normalize(image_emb, dim=-1)                   # unit length: dot = cosine
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale * image_emb @ text_emb.T                # [N, N]
    labels = torch.arange(len(logits), device=logits.device)     # image i <-> caption i
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


ours = contrastive_loss(image_emb, text_emb, model.logit_scale)
tested = clip_loss(image_emb, text_emb, model.logit_scale)
assert torch.allclose(ours, tested), (ours, tested)
print(f"inline loss {ours.item():.4f} == utils.losses.clip_loss {tested.item():.4f}")
print(f"ln N = ln {len(image_emb)} = {math.log(len(image_emb)):.4f}: the loss of a uniform guess")


# %% [markdown]
# The inline version and the tested `utils.losses.clip_loss` agree (the `assert` would stop the
# notebook otherwise). The untrained model's loss is compared with ln *N*, the loss of a model that
# spreads its bet evenly over the *N* captions: an untrained model is about that good, or worse when
# it is confidently wrong.

# %% [markdown]
# ### Your turn (optional, ungraded): the temperature's two limits
#
# Take a batch of *n* pairs in which every image's own caption is its most similar one, and every
# caption's own image too. What does the loss tend to as the logit scale *s* goes to 0, and as it
# grows without bound? Answer with a formula in *n*; the check compares it with `clip_loss` itself
# on such batches. Skipping this changes nothing below.

# %%
def loss_limits(n):
    # Return (loss as s -> 0, loss as s -> infinity) for a batch of n pairs ranked right.
    raise NotImplementedError  # your code here


passed = practice.check_temperature_limits(loss_limits)

# %% [markdown]
# The course's `clip_loss` also takes the batch's `positives` matrix. With it, each row's target is
# spread evenly over all its true captions instead of the diagonal alone (a target made from the
# labels, never from the model's own outputs). On a batch without repeated captions both are the same
# loss.

# %%
with_positives = clip_loss(image_emb, text_emb, model.logit_scale, positives.to(DEVICE))
print(f"diagonal targets only: {tested.item():.4f}   all true pairs as targets: "
      f"{with_positives.item():.4f}")

# %% [markdown]
# ## 6 · The similarity matrix before training
#
# We take the first eight test images and the first (most detailed) caption of each, and compute all
# 8 × 8 cosine similarities. Two small helpers embed a list of images by file name and a list of
# texts with the current model.

# %%
eval_transform = build_transform(IMAGE_SIZE, train=False)


@torch.no_grad()
def embed_image_files(names):
    pixels = [eval_transform(image=load_image(files.images_dir / n))["image"] for n in names]
    return model.eval().encode_image(torch.stack(pixels).to(DEVICE)).float().cpu()


def embed_text_list(texts):
    return embed_texts(model, tokenizer, list(texts), max_length=MAX_LENGTH, progress=False)


matrix_names = [name for name, _ in test_items[:8]]
matrix_texts = [captions[0] for _, captions in test_items[:8]]
thumbnails = [load_image(files.images_dir / name) for name in matrix_names]
before = embed_image_files(matrix_names) @ embed_text_list(matrix_texts).T
show(plot_similarity_matrix(before, thumbnails, matrix_texts, title="before training (cosine)"))

# %% [markdown]
# Before training, the diagonal is not special: whatever pattern there is comes from the random
# weights, not from what the images and captions mean. With the tiny encoders, for instance, the
# untrained text encoder gives every caption nearly the same vector, so each row of the matrix is
# almost constant and all values are close together.

# %% [markdown]
# ## 7 · Training
#
# `utils.train.fit` is a plain loop: AdamW with separate learning rates for the encoders and for the
# fresh heads (no weight decay on biases, norms and the logit scale), a short linear warm-up then a
# cosine decay, gradient clipping, and mixed precision on a GPU. After each epoch it embeds the dev
# split and measures retrieval, so we see whether the model generalises, not only whether the loss
# goes down.

# %% [markdown]
# **Two captions per image.** Offline, `CAPTIONS_PER_IMAGE = 2`: each image brings two of its five
# captions to every batch, so a batch holds *B* images and 2*B* texts. The tiny CNN is the expensive
# side (about three times the text encoder's time per batch, even with two captions per image), so the second caption buys a second training signal per image for little time. On Colab it
# stays 1, because the fine-tuning recipe there has not been measured with two; trying it is cheap
# (by torch's count, one 20-token caption through DistilBERT is 1.7 GFLOP forward, one 224-pixel
# image through ResNet-50 8.2). The loss
# keeps CLIP's square form: `clip_batch_loss` repeats each image embedding once per caption it
# brought, following the batch's `caption_owner`. On the synthetic set, two captions per image
# reached a better test recall in fewer epochs than one caption did.

# %%
train_loader = make_train_loader(CAPTIONS_PER_IMAGE)
pairs = next(iter(train_loader))
print(f"images {tuple(pairs['images'].shape)}, token ids {tuple(pairs['input_ids'].shape)}")
if CAPTIONS_PER_IMAGE > 1:
    print(f"caption_owner (first 8): {pairs['caption_owner'][:8].tolist()}")
    for text, owner in list(zip(pairs["captions"], pairs["caption_owner"].tolist(), strict=True))[:4]:
        print(f"  image {owner}: {text!r}")


# %%
def validate(model):
    return embed_split(model, tokenizer, files.images_dir, dev_items, IMAGE_SIZE,
                       num_workers=NUM_WORKERS, progress=False).metrics()


started = time.perf_counter()
history = fit(model, clip_parameter_groups(model, ENCODER_LR, HEAD_LR, WEIGHT_DECAY),
              train_loader, clip_batch_loss,
              TrainConfig(epochs=EPOCHS, seed=SEED, eval_every=1), evaluate=validate)
train_seconds = time.perf_counter() - started
print(f"{EPOCHS} epochs, {len(history.steps)} steps in {train_seconds:.0f} s; logit scale "
      f"{history.steps[0]['logit_scale']:.1f} -> {model.logit_scale.item():.1f}; dev text->image "
      f"R@1 {history.evals[-1]['text_to_image_R@1']:.3f}")

# %%
show(plot_training_curves(history.steps, history.evals))

# %% [markdown]
# How to read the four panels:
#
# - **Loss.** It starts near ln(number of texts in a batch), the uniform guess, and falls as the model learns to pick
#   each image's caption out of the batch. It does not go to zero: on the synthetic set several
#   captions of a batch often fit an image equally well, and those targets are shared.
# - **Learning rate.** A short warm-up, then a cosine decay to zero by the last step.
# - **Logit scale.** The model learns how sharp its softmax should be. It often dips at first, while
#   the similarities are still noise, and rises once they become reliable: then a sharper softmax
#   lowers the loss. In a short run it hardly moves.
# - **Validation R@1.** Retrieval on the dev split, which the model never trains on. In FAST mode
#   (two epochs on 600 images) it stays near chance; the full offline run climbs far above it and
#   levels off in the last epochs, as the learning rate decays.

# %%
clip_folder = save_clip(OUT_DIR / "clip", model, tokenizer)   # notebook 02 loads it from here
(OUT_DIR / "history.json").write_text(json.dumps(history.to_dict()))
print("saved", sorted(p.name for p in clip_folder.iterdir()))

# %% [markdown]
# ### The similarity matrix after training
#
# The same eight images and captions as before training:

# %%
after = embed_image_files(matrix_names) @ embed_text_list(matrix_texts).T
show(plot_similarity_matrix(after, thumbnails, matrix_texts, title="after training (cosine)"))
print(f"mean cosine on the diagonal {after.diagonal().mean():.2f}, off the diagonal "
      f"{(after.sum() - after.diagonal().sum()) / (after.numel() - len(after)):.2f}; "
      f"{(after.argmax(1) == torch.arange(len(after))).sum()} of {len(after)} rows peak on the diagonal")

# %% [markdown]
# After a full run, matching pairs score clearly higher than the rest: a bright diagonal (in FAST
# mode there is hardly any). Bright cells off the diagonal are worth a look: they join an image to a
# caption that shares some of its content, often the same colours on other shapes. That is the first
# hint of the failures studied in section 11.

# %% [markdown]
# ## 8 · Retrieval on the test split
#
# Retrieval is the task CLIP was trained for, measured on images it has never seen. We embed every
# test image and every test caption once, then ask:
#
# - **text → image**: for each caption, is a matching image among the *K* most similar images?
# - **image → text**: for each image, is one of its captions among the *K* most similar captions?
#
# Recall@K is the share of queries that succeed. Which pairs count as "matching" is the **positives
# matrix** `[captions, images]`. On Flickr8k a caption matches only the image it was written for. On
# the synthetic set a caption text matches *every* image that has it among its five captions. "a
# circle" is a true caption of many test images, and retrieving any of them is a hit. The chance
# level printed next to each number accounts for that.

# %%
test = embed_split(model, tokenizer, files.images_dir, test_items, IMAGE_SIZE,
                   num_workers=NUM_WORKERS)
metrics = test.metrics()
index_of = {name: i for i, name in enumerate(test.image_names)}   # row of each image in test


def chance_recall(positives, k):
    # Expected recall@k of a random ranking: 1 - P(none of the k picks is a positive).
    total = positives.shape[1]
    misses = [math.prod((total - p - i) / (total - i) for i in range(k))
              for p in positives.sum(1).tolist()]
    return 1 - sum(misses) / len(misses)


rows = []
for direction, positives_of_query in (("text_to_image", test.positives),
                                      ("image_to_text", test.positives.T)):
    rows.append((direction.replace("_to_", " -> "), *(
        f"{metrics[f'{direction}_R@{k}']:.3f} ({chance_recall(positives_of_query, k):.3f})"
        for k in (1, 5, 10))))
print(f"{len(test.image_names)} test images, {len(test.texts)} captions; chance in brackets\n")
print(format_table(["", "R@1", "R@5", "R@10"], rows))

per_caption = test.positives.sum(1)
widest = int(per_caption.argmax())
print(f"\na caption fits {per_caption.float().mean():.1f} test images on average; "
      f"{test.texts[widest]!r} fits {int(per_caption[widest])}")
summary = {"dataset": DATASET, "fast": FAST, "epochs": EPOCHS, "test": metrics}
(OUT_DIR / "metrics.json").write_text(json.dumps(summary, indent=2))

# %% [markdown]
# Compare each number with the chance level next to it. The positives matrix matters here: scoring
# only the single image a caption was generated for would count correct answers as errors whenever a
# short caption fits other images too.
#
# On the synthetic set, image → text usually comes out higher than text → image, for a plain
# reason: every image has a caption that names only its colours ("something red and something
# blue"), and colours are what this model learns first, so that caption alone is often enough for an
# image → text hit. A caption query, in contrast, often names shapes, sizes and positions that all
# have to match. Identical caption texts also get identical vectors: when the best caption for an
# image is a wrong one, its copies (one for every test image that has it) fill the next places too,
# which is why image → text gains less from R@1 to R@10 than you might expect.

# %% [markdown]
# ## 9 · Search with your own words
#
# The text encoder accepts any sentence, not only captions from the dataset. Below, each row is a
# free-text query and its five most similar test images. A frame is green when the image really
# matches the query: on the synthetic set we check the query against `objects.json`. On Flickr8k
# there is no such record, so an image counts as a match when one of its own captions contains the
# query's key word; that is only a rough check.

# %%
if DATASET == "synthetic":
    objects = json.loads((dataset_root / "objects.json").read_text())

    def has(shape=None, colour=None, size=None, count=1):
        # True for images holding `count` objects with these attributes (None: any value).
        def judge(name):
            return count == sum((shape in (None, o["shape"])) and (colour in (None, o["colour"]))
                                and (size in (None, o["size"])) for o in objects[name])
        return judge

    QUERIES = {"a red circle": has("circle", "red"), "a large blue square": has("square", "blue", "large"),
               "something yellow": has(colour="yellow"), "two triangles": has("triangle", count=2),
               "a small green star": has("star", "green", "small")}
else:
    def mentions(*words):
        def judge(name):
            return any(w in c.lower().split() for c in captions_of[name] for w in words)
        return judge

    QUERIES = {"a dog running on the grass": mentions("dog", "dogs"),
               "a man riding a bicycle": mentions("bike", "bicycle", "biker", "cyclist"),
               "children playing in the water": mentions("water", "pool", "ocean"),
               "a person climbing a rock": mentions("climbs", "climbing", "climber"),
               "people walking in the snow": mentions("snow", "snowy")}

top = (embed_text_list(QUERIES) @ test.image_emb.T).topk(5, dim=1)
found = [[test.image_names[i] for i in row] for row in top.indices.tolist()]
show(plot_retrieval_gallery(
    list(QUERIES), [[load_image(files.images_dir / n) for n in row] for row in found], top.values,
    [[judge(n) for n in row] for judge, row in zip(QUERIES.values(), found, strict=True)]))

# %% [markdown]
# Read each row from left to right: the score above each image is its cosine similarity with the
# query. Where a row has red frames, look at *what* is wrong with those images: the colour, the
# shape, the size, the count? Queries that name several attributes must get all of them right at
# once, and "two triangles" asks for a count. On the synthetic set, the colour-only query tends to be
# the most reliable, for the reason seen in the retrieval table. Edit `QUERIES` and run the cell
# again to try your own.
#
# The other direction: for a few test images, the five most similar captions among all distinct test
# captions.

# %%
first_index = {}
for j, text in enumerate(test.texts):
    first_index.setdefault(text, j)            # identical texts share a row of the positives
distinct = list(first_index.values())
picks = list(range(0, len(test.image_names), len(test.image_names) // 4))[:4]
ranked = (test.image_emb[picks] @ test.text_emb[distinct].T).topk(5, dim=1)
show(caption_ranking(
    [load_image(files.images_dir / test.image_names[i]) for i in picks],
    [[test.texts[distinct[j]] for j in row] for row in ranked.indices.tolist()], ranked.values,
    [[bool(test.positives[distinct[j], i]) for j in row]
     for i, row in zip(picks, ranked.indices.tolist(), strict=True)]))


# %% [markdown]
# Green captions are among the image's own five. On the synthetic set the short captions are worded
# canonically, so a true short description of an image *is* one of its own captions, and the red
# ones are (almost always) false for it. Read what is wrong in them: a colour, a shape, a size, a
# position? The answer says which parts of the caption the model has learnt to check.

# %% [markdown]
# ## 10 · Zero-shot classification
#
# CLIP's recipe for a classifier without training data:
#
# 1. for each class, write prompts from a few templates ("a photo of {}", "a drawing of {}", …);
# 2. embed the prompts and average them per class (a *prompt ensemble*; CLIP averages over 80
#    templates for ImageNet), then normalise;
# 3. the class vectors are the weights of a linear classifier: score = cosine(image, class vector).
#
# On the synthetic set the task is "which shape is in this image?", asked of the test images that
# hold exactly one shape, so that `objects.json` gives an unambiguous answer; chance is 1 in 5. We
# also ask "which colour?" of the same images (1 in 6). On Flickr8k there are no labels, so we show
# the predictions for a few images.

# %% [markdown]
# ### Your turn (optional, ungraded): step 3 as code
#
# Write the classifier of step 3 before reading ours below: given image embeddings `[N, D]` and class
# vectors `[C, D]`, neither of unit length, return each image's predicted class, the index of the
# class vector with the highest cosine (an `[N]` tensor of integers).

# %%
def zero_shot_predict(image_emb, class_emb):
    # image_emb [N, D], class_emb [C, D] -> [N] class indices
    raise NotImplementedError  # your code here


passed = practice.check_zero_shot(zero_shot_predict)

# %%
TEMPLATES = ["{}", "a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}"]
if DATASET == "synthetic":
    TASKS = {"shape": {s: f"a {s}" for s in SHAPES},             # "a circle", ...
             "colour": {c: f"something {c}" for c in COLOURS}}     # "something red", ...
else:
    TASKS = {"subject": {"dog": "a dog", "child": "a child", "bicycle": "a bicycle",
                         "water": "water", "snow": "snow"}}


def class_vectors(phrases, templates=TEMPLATES):
    per_template = [embed_text_list([t.format(p) for p in phrases]) for t in templates]
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)   # [classes, D]


def zero_shot(names, phrases, templates=TEMPLATES):
    # Class probabilities [images, classes] for the test images `names`.
    rows = [index_of[n] for n in names]
    logits = model.logit_scale.item() * test.image_emb[rows] @ class_vectors(phrases, templates).T
    return logits.softmax(dim=1)


# %%
if DATASET == "synthetic":
    single = [n for n in test.image_names if len(objects[n]) == 1]
    table, predictions = [], {}
    for task, classes in TASKS.items():
        labels = list(classes)
        truth = torch.tensor([labels.index(objects[n][0][task]) for n in single])
        accuracy = {t: (zero_shot(single, list(classes.values()), [t]).argmax(1) == truth)
                    .float().mean().item() for t in TEMPLATES}
        predictions[task] = (truth, zero_shot(single, list(classes.values())).argmax(1))
        accuracy["ensemble"] = (predictions[task][1] == truth).float().mean().item()
        table.append((f"{task} ({len(labels)} classes)", f"{1 / len(labels):.3f}",
                      *(f"{a:.3f}" for a in accuracy.values())))
    print(f"{len(single)} single-shape test images; accuracy per template and for the ensemble\n")
    print(format_table(["task", "chance", *(repr(t) for t in TEMPLATES), "ensemble"], table))
    truth, predicted = predictions["shape"]
    show(confusion_matrix(truth, predicted, list(TASKS["shape"]),
                          title="zero-shot shape (prompt ensemble)"))

# %% [markdown]
# The table puts each prompt template next to the ensemble of all five. The bare phrases ("a
# circle", "something red") are exactly the short captions of single-shape images, and the prefixes
# occur in the detailed captions, so no template is foreign to the model; the ensemble is a safe
# default when you cannot tell in advance which wording works best. Comparing the two tasks, each
# against its own chance level, shows which attribute the model has learnt more firmly. The
# confusion matrix shows which shapes get mixed up. When predictions pile up in a few columns, the
# model has favourite answers rather than a grasp of the outlines.
#
# Predictions for a few test images (on Flickr8k, this is the only view we have):

# %%
task, classes = next(iter(TASKS.items()))
shown = test.image_names[:8]
probs = zero_shot(shown, list(classes.values()))
titles = []
for name, p in zip(shown, probs, strict=True):
    best = p.topk(3)
    lines = [f"{list(classes)[c]} {v:.2f}" for v, c in zip(best.values, best.indices, strict=True)]
    if DATASET == "synthetic":
        lines.append("in it: " + ", ".join(f"{o['colour']} {o['shape']}" for o in objects[name]))
    titles.append("\n".join(lines))
show(image_grid([load_image(files.images_dir / n) for n in shown], titles, columns=4))


# %% [markdown]
# Each title lists the three most probable classes and, on the synthetic set, what the image really
# holds. An image with two or three shapes has no single right answer; a model that sees all of
# them should share its probability among them. Check whether it does, or whether it names a shape
# that is not there at all.

# %% [markdown]
# ## 11 · What the model gets wrong, and why
#
# Retrieval numbers average over easy and hard queries. To see *what* is hard, we pit each test
# image's own caption against a copy with one thing changed, and count how often the model prefers
# the true one. Chance is 50 %.
#
# - **binding**: "a red circle and a blue square" against "a blue circle and a red square". The same
#   words, only the colours are swapped between the shapes;
# - **where**: a detailed caption against its mirror image ("left" <-> "right", "top" <-> "bottom",
#   "above" <-> "below");
# - **counting**: "two circles and a star" against "a circle and a star" (or the other way round).
#
# A model that only checks *which* words fit the image, not how they are put together, sits at
# chance on binding: both captions have exactly the same words. (The probes read `objects.json`, so
# they run on the synthetic set only; on Flickr8k the mistakes shown next are the evidence.)

# %%
def prefers_true(names, pairs):
    # For each image names[k]: does pairs[k][0] (true) score higher than pairs[k][1] (altered)?
    texts = embed_text_list([t for pair in pairs for t in pair]).view(len(pairs), 2, -1)
    images = test.image_emb[[index_of[n] for n in names]]                # [images, D]
    scores = (texts @ images[:, :, None]).squeeze(-1)                     # [images, 2]
    return scores[:, 0] > scores[:, 1]


MIRROR = {"left": "right", "right": "left", "top": "bottom", "bottom": "top",
          "above": "below", "below": "above"}


def mirrored(caption):
    return " ".join(MIRROR.get(word, word) for word in caption.split())


def recount(caption):
    # Change the count of the first shape kind: "a circle" <-> "two circles", "three" -> "two".
    first, *rest = caption.split(" and ")
    number, noun = first.split(" ", 1)
    singular = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
    if number in ("a", "an"):
        first = f"two {next(p for p, s in singular.items() if s == noun)}"
    else:
        first = f"a {singular[noun]}" if number == "two" else f"two {noun}"
    return " and ".join([first, *rest])


# %%
if DATASET == "synthetic":
    def colour_shape_caption(objs):
        # The wording of each image's third caption: shapes in a fixed order, then colours.
        objs = sorted(objs, key=lambda o: (SHAPES.index(o["shape"]),
                                           list(COLOURS).index(o["colour"])))
        return " and ".join(("an " if o["colour"][0] in "aeiou" else "a ")
                            + f"{o['colour']} {o['shape']}" for o in objs)

    def swap_colours(objs):
        # Exchange the colours of the first object and the first one of another shape.
        a = objs[0]
        b = next(o for o in objs if o["shape"] != a["shape"])
        swap = {id(a): b["colour"], id(b): a["colour"]}
        return [{**o, "colour": swap.get(id(o), o["colour"])} for o in objs]

    # Captions per image, in the generator's order: [0] relations, [2] colour + shape, [3] counts.
    mixed = [n for n in test.image_names if len({o["shape"] for o in objects[n]}) > 1]
    placed = [n for n in test.image_names if mirrored(captions_of[n][0]) != captions_of[n][0]]
    probes = {
        "binding": (mixed, [(captions_of[n][2], colour_shape_caption(swap_colours(objects[n])))
                            for n in mixed]),
        "where": (placed, [(captions_of[n][0], mirrored(captions_of[n][0])) for n in placed]),
        "counting": (test.image_names, [(captions_of[n][3], recount(captions_of[n][3]))
                                        for n in test.image_names]),
    }
    assert all(colour_shape_caption(objects[n]) == captions_of[n][2] for n in mixed)
    rows = [(probe, len(names), f"{prefers_true(names, pairs).float().mean().item():.3f}", "0.500")
            for probe, (names, pairs) in probes.items()]
    print(format_table(["probe", "images", "true caption wins", "chance"], rows))
    for probe, (_, pairs) in probes.items():
        print(f"\n{probe}, e.g.  true: {pairs[0][0]!r}\n{'altered: ':>{len(probe) + 16}}"
              f"{pairs[0][1]!r}")

# %% [markdown]
# Next, real mistakes: test images whose first (most detailed) caption retrieves a wrong image
# first. Each pair shows the image the model picked (left) and the image the caption was written for
# (right), with their scores.

# %%
scores = test.text_emb @ test.image_emb.T                     # [captions, images]
best = scores.argmax(1)
# The first (most detailed) caption of each test image, and the image it was written for.
first = np.cumsum([0] + [len(captions) for _, captions in test_items])[:-1]
wrong = [(j, i) for i, j in enumerate(first.tolist()) if not test.positives[j, best[j]]]
images, titles = [], []
for j, i in wrong[:4]:
    images += [load_image(files.images_dir / test.image_names[k]) for k in (int(best[j]), i)]
    titles += [f"query: {test.texts[j]}\nmodel's pick ({scores[j, best[j]]:.2f})",
               f"written for this one ({scores[j, i]:.2f})"]
if wrong:
    show(image_grid(images, titles, columns=4, width=34))
print(f"the first caption of {len(wrong)} of {len(first)} test images retrieves a wrong image "
      f"first; {min(len(wrong), 4)} shown")

# %% [markdown]
# **What to look for, and why it happens.**
#
# - **Colours first.** Compare the colour and shape rows of the zero-shot table, and look at the
#   wrong picks above: they tend to have the query's colours, on other shapes. Colour is the easiest
#   cue there is. It survives the averaging of the feature grid untouched (a flat red patch makes the
#   pooled vector "red"), while telling a star from a cross needs convolution layers that respond to
#   outlines, which take longer to learn from captions alone.
# - **Right words, wrong arrangement.** The binding probe checks whether the model knows *which*
#   colour belongs to *which* shape. This is the best-known weakness of CLIP-style models
#   (Yuksekgonul et al., 2023, *When and why vision-language models behave like bags-of-words*). The
#   loss only asks a caption to beat the *other captions in its batch*, and a random batch almost
#   never holds a caption with the same words in another arrangement. Checking which words fit is
#   therefore enough to win nearly every comparison, and binding is hardly ever rewarded. Putting
#   such swapped captions into batches on purpose, as hard negatives, is the usual fix.
# - **Where things are.** The pooled image vector is an *average* over the feature grid, so where
#   something sits can only survive through what the features themselves encode. The "where" probe
#   measures how much of it did. Relations between two shapes are the hardest part of it: "left of"
#   and "right of" both describe a pair of shapes side by side, so only knowing *which* shape is on
#   which side tells the two captions apart.
# - **Counting is easier than it looks here.** Every object in a synthetic image has its own colour,
#   so the number of colours the model sees already says how many objects there are, and "two
#   circles and a star" implies one object more than "a circle and a star". A good score on this
#   probe need not mean that the model counts circles.
# - **Small model, small data, short training.** The offline model has seen a few thousand images
#   for a few minutes. In FAST mode none of these numbers mean much: they only show that the
#   pipeline runs.
#
# Notebook 02 keeps this model frozen and teaches a small head to align the text with the *patches*
# of the feature grid instead of their average. That is PACL's trick, and it gives the model a sense
# of *where* a word applies.

# %% [markdown]
# ## Appendix · Training on several GPUs and machines
#
# Everything above ran in one process. For Flickr30k, COCO or CC3M you want several GPUs, and then
# several machines. The course does it with PyTorch's own engine: `torchrun` starts one process per
# GPU, each process loads its own share of the data (`DistributedSampler`), and
# `DistributedDataParallel` averages the gradients. `fit()` from this notebook does all of that by
# itself when `torchrun` started it.
#
# One thing needs care, and it is the loss. Each caption must compete against the captions of the
# *whole* global batch, not only against the ones its own GPU saw: with 8 GPUs of 64 pairs each,
# that is 511 negatives instead of 63. So every process gathers all processes' embeddings, *with
# their gradients*, and scores its own 64 images against all 512 captions (and its own 64 captions
# against all 512 images). Its targets are its rows of the global 512 x 512 problem: the labels
# `0..63` shifted by 64 times the process's rank. `utils.distributed.gathered_clip_loss` does that;
# the tests check, on two CPU processes, that its loss and the gradient of every parameter equal
# those of one process on the same 8-pair batch, and that training ends with the same weights.
#
# The next cell prints the launch commands for `scripts/train_distributed.py`, which trains this
# notebook's offline CLIP on the synthetic set: one machine with N GPUs, and M machines (run the
# second command on every machine, each with its own `--node-rank`). `--batch-size` is per GPU.
# Run a command in a terminal, or from a cell with `!` in front. A Colab runtime has a single GPU,
# so there it only trains in one process.

# %%
script = repo_root() / "scripts" / "train_distributed.py"
gpus = torch.cuda.device_count() or 2   # one process per GPU; without GPUs, 2 on the CPU
arguments = (f"{script} --data-root {DATA_DIR / 'captioned_shapes'} "
             f"--out-dir {OUT_DIR / 'distributed'} --batch-size {BATCH_SIZE}")
print("one machine:\n"
      f"  torchrun --standalone --nproc-per-node={gpus} {arguments}\n")
print("two machines: run on each, with R = 0 on machine 0 and R = 1 on the other, and "
      "machine 0's address for NODE0_HOST:\n"
      f"  torchrun --nnodes=2 --node-rank=R --nproc-per-node={gpus} "
      f"--master-addr=NODE0_HOST --master-port=29500 {arguments}\n")
print("resume from the last checkpoint, on any number of processes: add --resume")
