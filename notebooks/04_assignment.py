# %% [markdown]
# # 04 · Assignment: CLIP and PACL in your own code
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/clip-pacl/clip-pacl/blob/main/notebooks/04_assignment.ipynb)
#
# Notebooks 01-03 built CLIP and PACL with the course's tested package. Here you write the central
# pieces yourself, each a step beyond what the notebooks showed as code:
#
# | exercise | you write | it returns |
# |---|---|---|
# | (a) | `clip_loss`: CLIP's symmetric contrastive loss | a 0-dim tensor |
# | (b) | `image_to_text_recall`: recall@K when an image has several captions | a float |
# | (c) | `pacl_compatibility`: PACL's patch-text compatibility | a `[B, T]` tensor |
# | (d) | `mean_iou`: mean intersection over union of segmentation maps | a float |
# | (e) | an open experiment on the synthetic set: a plot and a paragraph | a figure and text |
#
# **How it works.** Each exercise has a cell marked `# YOUR CODE HERE`: its docstring says exactly
# what goes in and what must come out. Replace the `raise NotImplementedError` with your code and run
# the cell. The *check* cell under it runs your function against the course's reference on several
# inputs, random ones and awkward ones (a batch of one, ties, non-contiguous tensors, float64, an
# ignored pixel, a class missing from the image), and tells you which input went wrong, what was
# expected, what you returned, and a hint. Run it as often as you like.
#
# **Rules.** Write each function yourself with `torch` and `torch.nn.functional`. A function taken
# from the course's package `utils` (imported, renamed, or called from inside your own function)
# scores 0 for that exercise, and the check says so. Keep the function names: the grader looks
# for them. The grader reads your code as well as running it: a notebook that runs code it does not
# show (`exec`, `eval`, `globals()`, `importlib.import_module`, `__import__`, ...) or changes the
# course's modules scores 0 on every exercise, and exercises whose code is the same as another
# submission's, up to the names of variables, comments and layout, are listed for your instructor.
#
# **Submitting.** Run the whole notebook top to bottom (*Runtime → Restart session and run all* on
# Colab), check that the summary at the end shows what you expect, save, and hand in the `.ipynb`
# file. Your instructor's grader re-runs it in a fresh kernel with a time limit for the whole
# notebook (5 minutes unless your instructor says otherwise) and re-checks every exercise, on its
# own, from what your functions return: the printed output does not count. A cell still running
# when time is up is stopped (and killed, if it will not stop); the exercises defined before it
# still count, the cells after it do not run.

# %% [markdown]
# ## 0 · Set-up
#
# On Colab this clones the course and installs its requirements and package; locally it only
# checks that the package is installed (`make setup` does it).

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
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from utils.course.grading import check_exercise, check_experiment, summary
from utils.course.notebook import fast_mode, synthetic_dataset
from utils.data import load_split, locate_dataset

# %%
# Parameters
FAST = fast_mode()   # CLIP_PACL_FAST=1: a smaller synthetic set for exercise (e)
SEED = 0


# %% [markdown]
# ## (a) · CLIP's loss when a row has several true captions
#
# A batch holds $N$ image-caption pairs, pair $i$ being image $i$ with caption $i$. CLIP
# (Radford et al. 2021, Fig. 3) L2-normalises both embeddings, scores every image against every
# caption with a scaled cosine, $\text{logits} = s\, \hat I \hat T^\top$ ($N \times N$), and
# takes the mean of two cross-entropies: over each row (which caption is this image's?) and over
# each column (which image is this caption's?), with the diagonal as the target. The multiplier
# $s = e^{t}$ is the inverse temperature, learnt in CLIP; here it is given.
#
# Notebook 01 (§5) pointed out what the diagonal gets wrong on Flickr8k: every image has five
# captions, so a batch can hold the same image twice, and then a true caption sits *off* the
# diagonal and the loss pushes it away as if it were a negative. The course's loss takes a boolean
# matrix `positives` ($N \times N$, `positives[i, j]` = image $i$ matches caption $j$, always true
# on the diagonal) and spreads each row's target evenly over its positives:
#
# $$\mathcal{L}_{\text{rows}} = -\frac{1}{N} \sum_i \sum_j \frac{\text{positives}_{ij}}{\sum_k
# \text{positives}_{ik}} \log \operatorname{softmax}_j(\text{logits}_{i,:}),$$
#
# and $\mathcal{L}_{\text{columns}}$ the same on the transposed matrices, each column's target
# spread over *its own* positives. The loss is $(\mathcal{L}_{\text{rows}} +
# \mathcal{L}_{\text{columns}}) / 2$. With `positives` the identity it is CLIP's loss. (This
# soft target is the course's choice; CLIP's paper has no repeated captions to handle.)

# %% tags=["solution"]
def clip_loss(image_emb, text_emb, logit_scale, positives):
    """CLIP's symmetric contrastive loss with several positives per row (and per column).

    Args:
        image_emb: [N, D] image embeddings, any length (normalise them); row i pairs with
            text_emb[i].
        text_emb: [N, D] text embeddings, any length.
        logit_scale: the multiplier s > 0 (a float or a 0-dim tensor), already exponentiated.
        positives: [N, N] bool, positives[i, j] = image i matches caption j (True on the
            diagonal; not always symmetric).

    Returns:
        A 0-dim tensor in the inputs' dtype, through which gradients flow: the mean of the
        rows' loss (each row of s * I @ T.T against its positives, spread evenly) and the
        columns' loss (each column against its own positives), each averaged over the batch.
    """
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    targets = positives.to(logits.dtype)
    rows = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    columns = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(dim=0)).sum(0).mean()
    return (rows + columns) / 2


# %%
result_a = check_exercise("a", clip_loss)


# %% [markdown]
# ## (b) · Recall@K with several captions per image
#
# Retrieval asks: given an image, are its captions ranked near the top of all captions? On Flickr8k
# every image has five captions, and finding *any* of them counts. Recall@K for image -> text
# retrieval is the share of images that have at least one of their own captions among the $K$
# captions they score highest. `text_to_image[j]` says which image caption $j$ belongs to; do not
# assume the captions are grouped or that every image has five.

# %% tags=["solution"]
def image_to_text_recall(similarity, text_to_image, k):
    """Image -> text recall@k when an image may have several captions.

    Args:
        similarity: [I, T] score of image i with caption j (higher is a better match).
        text_to_image: [T] int64, the image index of each caption (any order, any number of
            captions per image).
        k: the cut-off (an int >= 1); when k > T every caption is within the top k.

    Returns:
        A Python float in [0, 1]: the share of images with at least one of their own captions
        among their k highest-scoring captions.
    """
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices                                     # [I, k]
    is_own = text_to_image[top] == torch.arange(similarity.shape[0])[:, None]   # [I, k]
    return is_own.any(dim=1).float().mean().item()


# %%
result_b = check_exercise("b", image_to_text_recall)


# %% [markdown]
# ## (c) · The PACL compatibility, with padded patches
#
# PACL (Mukhoti et al., CVPR 2023, Eq. 2-3) compares a text with an image through its *patches*:
# for patch embeddings $v_1, \dots, v_P$ and a text embedding $u$, the weights
# $a = \text{softmax}_p(\cos(v_p, u))$ pick the patches that match the text,
# $\bar v = \sum_p a_p v_p$ pools them (the patches as they are, not normalised), and the
# compatibility is $\phi = \cos(\bar v, u)$. Notebook 02 (§3) built it for a batch of images of
# one size.
#
# Images of different sizes give different numbers of patches. To batch them, each image's patches
# are padded to a common $P$ with filler vectors, and a boolean `patch_mask` ($B \times P$) says
# which patches are real. Padding is not part of the image, so it must not change $\phi$: a padded
# patch gets weight exactly 0 in the softmax (the softmax runs over the real patches only), and
# adds nothing to $\bar v$. Beware: a zero vector has cosine 0 with every text, and
# $e^0 = 1$ is not a weight of 0. (Masking the padding is the course's rule for this exercise:
# PACL itself works on fixed-size crops.)

# %% tags=["solution"]
def pacl_compatibility(patch_emb, text_emb, patch_mask):
    """PACL's compatibility of every image with every text, over the real patches only.

    Args:
        patch_emb: [B, P, D] patch embeddings of B images, padded to P patches.
        text_emb: [T, D] text embeddings, any length.
        patch_mask: [B, P] bool, True for a real patch, False for padding (each image has at
            least one real patch; they need not come first).

    Returns:
        A [B, T] tensor in the inputs' dtype: entry [b, t] is cos(sum_p a_p patch_emb[b, p],
        text_emb[t]) with a = softmax over the real patches p of cos(patch_emb[b, p],
        text_emb[t]); padded patches get weight 0.
    """
    texts = F.normalize(text_emb, dim=-1)
    similarity = torch.einsum("bpd,td->btp", F.normalize(patch_emb, dim=-1), texts)  # [B, T, P]
    padding = ~patch_mask[:, None, :]                                     # [B, 1, P]
    weights = similarity.masked_fill(padding, float("-inf")).softmax(dim=-1)
    real = patch_emb.masked_fill(~patch_mask[..., None], 0)               # padding adds nothing
    pooled = torch.einsum("btp,bpd->btd", weights, real)                  # [B, T, D]
    return torch.einsum("btd,td->bt", F.normalize(pooled, dim=-1), texts)


# %%
result_c = check_exercise("c", pacl_compatibility)


# %% [markdown]
# ## (d) · mIoU under the VOC-20 rule
#
# Segmentation is scored per class $c$ by the intersection over union
# $\text{IoU}_c = |\text{pred} = c \wedge \text{target} = c| \,/\, |\text{pred} = c \vee
# \text{target} = c|$, and mIoU is the mean over classes, with the pixel counts pooled over the
# whole set before dividing. Pixels whose target is `ignore_index` (object borders) count for
# nothing, and a class that appears neither in the prediction nor in the target is left out of the
# mean.
#
# Notebook 03 (§3) also scored each method under the VOC-20 protocol: on *object pixels only*. The model is never asked where the background is: the background pixels of the target are
# ignored, and every pixel is predicted as its best *object* class, even where a background score
# would win. Here the model's output is a score per pixel for the background (channel 0) and for
# $C$ object classes (channels $1..C$); the target holds 0 for background, $1..C$ for objects, and
# `ignore_index` for unlabelled pixels. Turn the scores into a prediction and compute the mIoU
# under that rule.

# %% tags=["solution"]
def voc20_mean_iou(scores, target, ignore_index=255):
    """mIoU over object pixels only, with background never predicted.

    Args:
        scores: [N, 1 + C, H, W] float scores: channel 0 is background, channels 1..C the object
            classes 1..C.
        target: [N, H, W] integer class map: 0 background, 1..C objects, ignore_index unlabelled.
        ignore_index: pixels whose target is this value are left out.

    Returns:
        A Python float: with each pixel predicted as its best object class (1..C), and the
        pixels whose target is background or ignore_index left out, the mean over the classes
        present in the prediction or the target of |pred == c and target == c| /
        |pred == c or target == c|, counted over all pixels of the batch together.
    """
    prediction = scores[:, 1:].argmax(dim=1).reshape(-1) + 1
    target = target.reshape(-1).long()
    kept = (target != 0) & (target != ignore_index)
    prediction, target = prediction[kept], target[kept]
    ious = []
    for c in range(1, scores.shape[1]):
        union = ((prediction == c) | (target == c)).sum().item()
        if union > 0:
            ious.append(((prediction == c) & (target == c)).sum().item() / union)
    return sum(ious) / len(ious)


# %%
result_d = check_exercise("d", voc20_mean_iou)


# %% [markdown]
# ## (e) · An open experiment
#
# Ask one question about CLIP or PACL, answer it with an experiment on the synthetic *captioned
# shapes* set, show the answer in a plot, and explain it in a paragraph. Keep it to a minute or
# less of CPU time. Some questions to start from:
#
# - **The temperature.** How does the logit scale $s$ change the loss of *fixed* embeddings, and why
#   does CLIP learn $s$ instead of fixing it? Idea: turn each image's colour + shape caption (the
#   third caption of each test image, e.g. "a red circle and a blue star") into a bag-of-words
#   vector, add noise for the image side and independent noise for the text side, and plot your
#   `clip_loss` against $s$ for a few noise levels.
# - **Duplicates.** Several synthetic images share a caption text. What does that do to the loss and
#   to recall@K?
# - **PACL's softmax.** With made-up patches, how does the compatibility change as more patches
#   match the text?
#
# `synthetic_dataset(FAST)` returns the dataset's folder (generated the first time), and
# `load_split(locate_dataset(folder), "test")` its test images as `(name, [five captions])`.
# `run_experiment()` must return the figure (label the axes); `EXPERIMENT_ANSWER` holds your
# paragraph. The check only sees that a labelled plot and a paragraph of 50 words or more exist;
# your instructor reads the rest.

# %% tags=["solution"]
def run_experiment():
    """Your experiment on the synthetic set (a minute or less of CPU time).

    Returns:
        A matplotlib Figure that answers your question, with labelled x and y axes.
    """
    # The question: how does the logit scale s change CLIP's loss of fixed embeddings?
    items = load_split(locate_dataset(synthetic_dataset(FAST, progress=False)), "test")
    contents = [captions[2] for _, captions in items]         # colour + shape, e.g. "a red circle"
    vocabulary = {word: i for i, word in enumerate(sorted({w for c in contents for w in c.split()}))}
    content = torch.zeros(len(contents), len(vocabulary))
    for row, caption in enumerate(contents):
        for word in caption.split():
            content[row, vocabulary[word]] += 1
    content = F.normalize(content, dim=-1)                    # [N, V] what each image shows
    generator = torch.Generator().manual_seed(SEED)
    scales = torch.logspace(-1, 2.5, 30)
    only_own = torch.eye(len(contents), dtype=torch.bool)     # one true caption per image
    fig, ax = plt.subplots(figsize=(7, 4))
    for noise in (0.0, 0.5, 1.0, 2.0):
        # Independent noise on each side stands for imperfect image and text encoders.
        images, texts = (content + noise / math.sqrt(len(vocabulary))
                         * torch.randn(content.shape, generator=generator) for _ in range(2))
        losses = torch.tensor([clip_loss(images, texts, s, only_own).item() for s in scales])
        best = losses.argmin()
        line, = ax.plot(scales, losses, label=f"noise {noise}")
        ax.plot(scales[best], losses[best], "o", color=line.get_color())
        print(f"noise {noise}: lowest loss {losses[best]:.2f} at s = {scales[best]:.1f}")
    ax.axhline(math.log(len(contents)), color="grey", linestyle="--",
               label=f"log N = {math.log(len(contents)):.2f} (a uniform guess)")
    ax.set(xscale="log", ylim=(0, 2 * math.log(len(contents))), xlabel="logit scale s",
           ylabel="CLIP loss", title=f"Loss of fixed embeddings, {len(contents)} test images")
    ax.legend()
    return fig


# %% tags=["solution"]
EXPERIMENT_ANSWER = """
Every curve starts at log N on the left: with a tiny logit scale all logits are nearly equal,
each caption looks equally likely, and the embeddings do not matter. With noise-free embeddings
the loss keeps falling as s grows but levels off above zero, because images with the same content
get identical embeddings and no scale can tell them apart. As soon as the embeddings are noisy,
some wrong pairs score above right ones, and a large s turns each such mistake into a loss that
grows linearly with s: every noisy curve has a lowest point at a finite s, and the noisier the
embeddings, the smaller that best s (the dots move left). So the right temperature depends on how
good the encoders are, and that changes during training: this is why CLIP learns s with the
encoders instead of fixing it. A fixed s = 1 (a popular tutorial's choice) is far too small:
cosines lie between -1 and 1, so the loss stays near log N whatever the encoders learn.
"""

# %%
result_e = check_experiment(run_experiment, EXPERIMENT_ANSWER)

# %% [markdown]
# ## Summary
#
# Your status on every exercise you have checked in this session. Before you submit, restart the
# kernel and run everything, so that this table reflects the notebook as you hand it in.

# %%
print(summary())
