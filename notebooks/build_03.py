"""Write ``notebooks/03_open_vocab_segmentation.ipynb`` from the cells below (no outputs).

    .venv/bin/python notebooks/build_03.py

As for notebooks 01 and 02, the cells live here as plain strings so that a change reads as a
normal diff; the notebook is the artefact users open. Edit this file and re-run it.
"""

from __future__ import annotations

from notebook_builder import SETUP_CELL, NotebookBuilder

NOTEBOOK = NotebookBuilder("03_open_vocab_segmentation.ipynb")
md, code, BADGE = NOTEBOOK.md, NOTEBOOK.code, NOTEBOOK.badge


# ================================================================================================
md(f"""
# 03 · Open-vocabulary segmentation: from patch scores to masks

{BADGE}

Notebook 02 trained PACL's small vision embedder so that a frozen CLIP's **patches** line up with
text. This notebook cashes that in: given any list of class *names*, it colours every pixel of an
image with the class it matches, or with "background". No mask was used in training; the
classes are not fixed in advance: type a new name and it is a new class. In this notebook you will:

1. turn a list of class names into text vectors with a prompt ensemble;
2. go from patch-text scores to a mask, step by step: score, upsample, softmax, argmax, and
   PACL's entropy rule for background;
3. compare three ways to get the patch vectors (raw CLIP patches, MaskCLIP's trick, PACL) by
   mean intersection over union (mIoU) against ground-truth masks;
4. play with an interactive explorer: your own prompts, class lists and threshold;
5. on Colab, segment real photos and (optionally) score Pascal VOC 2012;
6. look at what goes wrong, and why.

| | offline (a laptop CPU) | Google Colab (GPU runtime) |
|---|---|---|
| frozen CLIP | the course's CLIP from notebook 01 (tiny CNN, 16 × 16 grid at 64 px) | OpenAI CLIP ViT-B/16 (14 × 14 patches at 224 px) |
| PACL | the embedder notebook 02 trained on the synthetic set | the embedder notebook 02 trained on Flickr8k |
| methods | raw patches, PACL | raw patches, MaskCLIP, PACL |
| scored on | the synthetic test split (its masks) | the same, plus Pascal VOC 2012 val (optional) and real photos |

`CLIP_PACL_FAST=1` turns on FAST mode: a smoke run on the small synthetic set with the small
models of FAST-mode notebooks 01 and 02. Its numbers only show that every step works.
""")

md("""
## 0 · Set-up

On Colab this clones the course and installs its requirements (Colab's own torch and ipywidgets
are kept). Locally it only makes the repository importable.
""")

code(SETUP_CELL)

code("""
import functools

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from utils.backbones import HF_CLIP_NAME, CourseCLIPBackbone, HFCLIPBackbone, load_hf_clip
from utils.data import load_image, load_split, locate_dataset
from utils.demo import DemoConfig, run_demo
from utils.explorer import explorer_figure, segmentation_explorer
from utils.models import load_clip
from utils.notebook import (
    IN_COLAB,
    SYNTHETIC_SIZES,
    data_dir,
    fast_mode,
    format_table,
    outputs_dir,
    pick_device,
    show,
    synthetic_dataset,
)
from utils.pacl import patch_text_similarity
from utils.pacl_io import load_pacl
from utils.prompts import PROMPT_TEMPLATES, format_prompt
from utils.segmentation import (
    Segmenter,
    best_threshold,
    class_embeddings,
    confusions_by_threshold,
    load_mask,
    normalised_entropy,
    patch_embeddings,
    run_segmentation,
    threshold_with_best_miou,
)
from utils.synthetic import CLASS_NAMES
from utils.viz_segmentation import (
    lowest_scores,
    plot_class_heatmaps,
    plot_methods_side_by_side,
    plot_miou_bars,
    plot_overlay,
    plot_per_class_iou,
    plot_worst_cases,
)
from utils.voc import (
    REAL_PHOTOS,
    VOC_PROMPT_NAMES,
    download_images,
    load_voc_split,
    prepare_voc,
    read_split,
    voc_miou,
)
""")

md("""
### Parameters

Offline, the frozen CLIP is the one notebook 01 saved to `outputs/01_clip/clip` and PACL the one
notebook 02 saved to `outputs/02_pacl/pacl`; on Colab the CLIP is OpenAI's ViT-B/16. The
background threshold of each method is tuned on dev images, then every score is measured on the
test split. Pascal VOC is a 2 GB download: it runs on Colab only, on at most `VOC_MAX_IMAGES`
validation images.
""")

code("""
# Parameters
FAST = fast_mode()                      # CLIP_PACL_FAST=1: small synthetic set, small models
BACKBONE = "openai" if IN_COLAB and not FAST else "course"
TUNE_IMAGES = 100 if FAST else 300      # dev images used to tune the background threshold
RUN_VOC = BACKBONE == "openai"          # score Pascal VOC 2012 val (downloads ~2 GB once)
VOC_MAX_IMAGES = 300                    # cap on VOC val images (1449 in all)
VOC_TUNE_IMAGES = 50                    # VOC *train* images used to tune VOC's threshold

DEVICE = pick_device()
DATA_DIR = data_dir()                   # $CLIP_PACL_DATA or <repo>/data
CLIP_DIR = outputs_dir("01_clip") / "clip"
PACL_DIR = outputs_dir("02_pacl") / "pacl"
OUT_DIR = outputs_dir("03_segmentation")
print(f"backbone={BACKBONE}  fast={FAST}  device={DEVICE}  voc={RUN_VOC}\\noutputs -> {OUT_DIR}")
""", tags=("parameters",))

# ================================================================================================
md("""
## 1 · The frozen CLIP and the trained PACL

`load_pacl` checks that the embedder was trained on *this* CLIP (it compares a hash of the
backbone's weights that notebook 02 stored with it): an embedder only makes sense on top of the
patches it was trained on. If notebooks 01 and 02 have not been run here, the next cell trains
both with `utils.demo`, the same recipe (a few minutes).
""")

code("""
if BACKBONE == "openai":
    backbone = load_hf_clip(HF_CLIP_NAME, device=DEVICE)        # downloads ~600 MB once
    IMAGE_SIZE = 224
else:
    if not (CLIP_DIR / "clip_config.json").exists() or not (PACL_DIR / "pacl_config.json").exists():
        demo_dir = OUT_DIR / "demo"
        print(f"No CLIP in {CLIP_DIR} or no PACL in {PACL_DIR}: notebooks 01-02 have not been run "
              f"here. Training both with utils.demo into {demo_dir}.")
        make_config = DemoConfig.fast if FAST else DemoConfig
        run_demo(make_config(data_root=str(synthetic_dataset(FAST)), out_dir=str(demo_dir),
                             **SYNTHETIC_SIZES["fast" if FAST else "full"]))
        CLIP_DIR, PACL_DIR = demo_dir / "clip", demo_dir / "pacl"
    clip_model, clip_tokenizer = load_clip(CLIP_DIR, device=DEVICE)
    backbone = CourseCLIPBackbone(clip_model, clip_tokenizer)
    IMAGE_SIZE = clip_model.config.image_size

try:
    pacl, pacl_meta = load_pacl(PACL_DIR, device=DEVICE, backbone=backbone)
except FileNotFoundError as error:
    if BACKBONE != "openai":
        raise
    print(f"{error}\\nGoing on without PACL: raw patches and MaskCLIP only.")
    pacl = None

METHODS = ["raw"]
if isinstance(backbone, HFCLIPBackbone):
    METHODS.append("maskclip")          # MaskCLIP's trick needs a ViT's last attention block
if pacl is not None:
    METHODS.append("pacl")
GRID = backbone.grid_shape(IMAGE_SIZE)
print(f"images at {IMAGE_SIZE} px -> {GRID[0]} x {GRID[1]} patches; methods: {METHODS}")
""")

code("""
dataset_root = synthetic_dataset(FAST)
files = locate_dataset(dataset_root)
masks_dir = dataset_root / "masks"
dev_names = [name for name, _ in load_split(files, "dev")][:TUNE_IMAGES]
test_names = [name for name, _ in load_split(files, "test")]
CLASSES = list(CLASS_NAMES[1:])         # mask value c + 1 is CLASSES[c]; 0 is background
print(f"{dataset_root}: classes {CLASSES}; {len(dev_names)} dev images to tune, "
      f"{len(test_names)} test images to score")
""")

# ================================================================================================
md("""
## 2 · From scores to a mask, step by step

We follow one test image through the whole pipeline with PACL (or, without PACL, the raw
patches), and check at the end that `utils.segmentation` gives the very same mask.

**Class vectors from a prompt ensemble.** A bare word is an odd caption, so each class name is put
into every template of `utils.prompts.PROMPT_TEMPLATES` ("a photo of a {}", ...); each prompt
is embedded and normalised, the vectors of one class are averaged, and the mean is normalised
again (CLIP Sec. 3.1.4). That gives one unit vector per class, `[C, D]`.
""")

code("""
prompts = [format_prompt(template, name) for name in CLASSES for template in PROMPT_TEMPLATES]
per_prompt = backbone.text_embeddings(prompts).float()                       # [C * T, D]
per_prompt = per_prompt.view(len(CLASSES), len(PROMPT_TEMPLATES), -1)        # [C, T, D]
class_emb = F.normalize(F.normalize(per_prompt, dim=-1).mean(1), dim=-1)    # [C, D]
assert torch.allclose(class_emb, class_embeddings(backbone, CLASSES).float(), atol=1e-5)
print(f"{len(prompts)} prompts, e.g. {prompts[:2]} -> class vectors {tuple(class_emb.shape)}; "
      "same as utils.segmentation.class_embeddings")
""")

md("""
**Scores of every patch against every class.** The image goes through the frozen CLIP, its patch
vectors through PACL's embedder, and the cosine of each patch with each class vector gives a
`[C, P]` score table: one coarse map per class on the patch grid. A map has one value per patch,
so it is bilinearly upsampled to the image's own size (`[C, H, W]`). The heatmaps share one
colour scale, so they can be compared.
""")

code("""
METHOD = "pacl" if pacl is not None else "raw"
segmenter = Segmenter(backbone, CLASSES, method=METHOD, pacl=pacl)   # entropy background, 0.5
name = next(n for n in test_names if len(np.unique(load_mask(masks_dir / n))) >= 3)
image, truth = load_image(files.images_dir / name), load_mask(masks_dir / name)

pixels = backbone.image_transform(IMAGE_SIZE)(image=image)["image"][None]    # [1, 3, s, s]
patches = patch_embeddings(backbone, pixels, METHOD, pacl).float()          # [1, P, D]
texts = pacl.embed_texts(class_emb) if METHOD == "pacl" else class_emb       # [C, D]
scores = patch_text_similarity(patches, texts).cpu()                        # [1, C, P], to plot
coarse = scores.reshape(1, len(CLASSES), *GRID)                             # [1, C, h, w]
fine = F.interpolate(coarse, size=image.shape[:2], mode="bilinear",
                     align_corners=False)                                   # [1, C, H, W]
top_two = fine[0].topk(2, dim=0).values                                     # [2, H, W]
print(f"{name}: patches {tuple(patches.shape)} -> scores {tuple(scores.shape)} -> grid "
      f"{tuple(coarse.shape)} -> pixels {tuple(fine.shape)}\\nmean gap between the best and the "
      f"second-best class score of a pixel: {(top_two[0] - top_two[1]).mean():.3f}")
show(plot_class_heatmaps(image, fine[0].numpy(), CLASSES))
""")

md("""
Where the embedder has learnt a shape, its heatmap is brightest on that shape; where the maps
look alike, the model cannot tell the classes apart there. The scores are cosines, and what
decides a pixel is the *gap* between the best class and the runner-up (printed above), which is
small next to the cosines' range of -1 to 1. The next step sharpens it. (A full offline run printed
a mean gap of 0.054 on its first test image.)

**Probabilities, argmax, background.** Multiplying the cosines by the logit scale learnt in
training (PACL's own, or CLIP's for the raw patches) and taking a softmax over the classes gives
each pixel a probability distribution over the `C` classes. The argmax picks a class for *every*
pixel: there is no "nothing" yet. PACL's rule for background: where the distribution is nearly
uniform, no class matches well. Its normalised entropy (0 = certain, 1 = uniform) measures that,
and pixels above a threshold become background.
""")

code("""
probabilities = (segmenter.logit_scale * fine).softmax(1)                   # [1, C, H, W]
every_pixel_a_class = probabilities.argmax(1) + 1                           # [1, H, W], 1..C
entropy = normalised_entropy(probabilities)                                 # [1, H, W], 0..1
mask = torch.where(entropy > segmenter.threshold, 0, every_pixel_a_class)   # 0 = background

library_probabilities, library_mask = segmenter.segment_image(image, IMAGE_SIZE)
assert np.array_equal(mask[0].numpy(), library_mask), "differs from Segmenter.segment_image"
print(f"logit scale {segmenter.logit_scale:.1f}, threshold {segmenter.threshold}: same mask as "
      "Segmenter.segment_image")

fig, axes = plt.subplots(1, 4, figsize=(13, 4))
plot_overlay(image, truth, CLASSES, ax=axes[0], title="ground truth")
plot_overlay(image, every_pixel_a_class[0].numpy(), CLASSES, ax=axes[1], title="argmax only")
heat = axes[2].imshow(entropy[0], cmap="viridis", vmin=0, vmax=1)
axes[2].set_title("normalised entropy", fontsize=9)
axes[2].axis("off")
fig.colorbar(heat, ax=axes[2], fraction=0.046)
plot_overlay(image, mask[0].numpy(), CLASSES, ax=axes[3],
             title=f"entropy > {segmenter.threshold} -> background")
show(fig)
""")

md("""
Read the panels from left to right. The argmax alone has to give every background pixel one of
the shapes. The entropy map shows how sure the model is at each pixel, and the threshold turns
the unsure pixels into background. Where the map is low on the background and high on the
shapes, that works; where it is not, the threshold cuts into the shapes or lets background
through. One threshold has to serve every image, so the next section tunes it on dev images
rather than guessing.
""")

# ================================================================================================
md("""
## 3 · The methods compared

Three ways to get patch vectors, one pipeline after them (`utils.segmentation.patch_embeddings`):

- **raw**: the frozen CLIP's own patch vectors. CLIP's loss only ever saw the pooled image
  vector, so nothing made a single patch agree with the text of what it shows.
- **MaskCLIP** (Zhou et al. 2022, Colab only: it needs a ViT): in the last transformer block,
  every token attends only to itself, which is just the block's value path. Each output patch then
  keeps its own content instead of a mixture of the whole image. No training at all.
- **PACL**: the raw patches through the vision embedder trained in notebook 02.

For each method, the entropy threshold that gives the best mIoU on the dev images is picked
(`best_threshold`), then the test split is scored with it. **mIoU**: for each class (background
included), the intersection of predicted and true pixels over their union, counted over all test
pixels together, then averaged over the classes.
""")

code("""
runs = {}
for method in METHODS:
    method_segmenter = Segmenter(backbone, CLASSES, method=method, pacl=pacl)
    tuning = run_segmentation(method_segmenter, files.images_dir, masks_dir, dev_names, IMAGE_SIZE)
    method_segmenter.threshold = best_threshold(tuning, method_segmenter)
    test_run = run_segmentation(method_segmenter, files.images_dir, masks_dir, test_names,
                                IMAGE_SIZE)
    runs[method] = (method_segmenter, tuning, test_run)

results = {method: run.metrics(seg) for method, (seg, _, run) in runs.items()}
print(format_table(["method", "threshold", "mIoU", "pixel accuracy"],
                   [(m, runs[m][0].threshold, r["mIoU"], r["pixel_accuracy"])
                    for m, r in results.items()]))
""")

code("""
show(plot_miou_bars({m: r["mIoU"] for m, r in results.items()}, reference=0.5,
                    reference_label="the course's bar for PACL",
                    title=f"synthetic test split, {len(test_names)} images: mIoU (background "
                          "included)"))
show(plot_per_class_iou({m: r["per_class_iou"] for m, r in results.items()}, CLASSES))
""")

md("""
The first chart is the headline: the raw patches against the trained embedder, on the same
images, the same class prompts and the same pipeline. The second splits each mIoU by class: the
background bar shows how well the entropy rule separates "nothing" from the shapes, and the shape
bars show which shapes each method tells apart. In FAST mode the models have trained for only a
few epochs, and the bars are low for every method.

A full offline run (notebooks 01 and 02 run in full first, on 2 CPU cores; the same models and
numbers as `make demo`) printed mIoU 0.190 for the raw patches (threshold 0.25, pixel accuracy
0.673) and 0.178 for PACL (threshold 0.55, pixel accuracy 0.617), far from the course's bar of
0.50. PACL finds a few more circles and triangles than the raw patches, and loses most stars and
crosses and some background: its maps point at the right shapes (notebook 02's AUCs), but at
each pixel the classes' scores lie close together and the background is not where the entropy
is high. Section 6 measures why.

**How much does the threshold matter?** Each curve is a method's dev-set mIoU as the threshold
moves; the dot marks the value picked.
""")

code("""
thresholds = np.linspace(0.05, 0.95, 19)
fig, ax = plt.subplots(figsize=(5.5, 3.4))
for method, (seg, tuning, _) in runs.items():
    curve = [tuning.metrics(seg, float(t))["mIoU"] for t in thresholds]
    line, = ax.plot(thresholds, curve, label=method)
    ax.plot(seg.threshold, tuning.metrics(seg)["mIoU"], "o", color=line.get_color())
ax.set(xlabel="normalised-entropy threshold (above it: background)", ylabel="dev mIoU",
       ylim=(0, 1), title="background threshold")
ax.legend()
show(fig)
""")

md("""
At a threshold near 0 almost every pixel is background; near 1, almost none is. In between the
curve of a method with useful probabilities rises to a peak. A flat curve means that the
probabilities are about equally uncertain everywhere, on the shapes and on the background.

Now a few test images, every method side by side with the ground truth (each title carries that
image's own mIoU):
""")

code("""
examples = test_names[:4]
index = {n: i for i, n in enumerate(test_names)}
test_masks = {m: run.masks(seg) for m, (seg, _, run) in runs.items()}           # [N, H, W] each
per_image = {m: run.per_image_miou(seg) for m, (seg, _, run) in runs.items()}
for n in examples:
    i = index[n]
    show(plot_methods_side_by_side(load_image(files.images_dir / n),
                                   {m: masks[i].numpy() for m, masks in test_masks.items()},
                                   CLASSES, load_mask(masks_dir / n),
                                   metrics={m: per_image[m][i] for m in per_image}))
""")

md("""
And the test images on which the best method does worst (lowest per-image mIoU), with their
ground truth and its prediction:
""")

code("""
best = max(results, key=lambda m: results[m]["mIoU"])
seg, _, run = runs[best]
worst = lowest_scores(per_image[best], 6)
show(plot_worst_cases([load_image(files.images_dir / test_names[i]) for i in worst],
                      test_masks[best][worst].numpy(), run.targets[worst].numpy(), CLASSES,
                      [per_image[best][i] for i in worst],
                      names=[test_names[i] for i in worst]))
print(f"worst cases of {best!r}")
""")

md("""
**Background by prompt instead of by entropy.** The other common way to find background is to
name it: a few background prompts ("a plain background", ...) become one more class that
competes in the argmax. No threshold to tune, but the prompt has to describe what the
background looks like, for this model.
""")

code("""
prompt_segmenter = Segmenter(backbone, CLASSES, method=METHOD, pacl=pacl, background="prompt")
prompt_run = run_segmentation(prompt_segmenter, files.images_dir, masks_dir, test_names,
                              IMAGE_SIZE)
background_rules = {"entropy threshold": results[METHOD]["mIoU"],
                    "background prompt": prompt_run.metrics(prompt_segmenter)["mIoU"]}
print(format_table([f"background rule ({METHOD})", "test mIoU"], list(background_rules.items())))
""")

md("""
A full offline run printed 0.178 with the entropy threshold and 0.075 with the background
prompts, for PACL. The prompts' words ("plain", "empty", "nothing") never occur in the synthetic
captions, so the course's text encoder has nothing to say about them, and the background class
wins at the wrong pixels. On Colab, with OpenAI's CLIP, such words carry meaning.
""")

# ================================================================================================
md("""
## 4 · Explore: your own prompts

The explorer below segments one image at a time with PACL (or the raw patches without it). Pick
an image, untick classes, **type new ones** (comma-separated: "red shape, blue shape" or "a big
circle"), and move the background threshold. Each change redraws three panels: the image, the
mask with a legend, and the probability of the winning class at each pixel.

It is built from ipywidgets' core widgets and `interactive` only, so it works with Colab's
ipywidgets 7 as well as ipywidgets 8. (In a static view of this notebook, e.g. on GitHub, the
widget does not show; the figure after it does.)
""")

code("""
@functools.lru_cache(maxsize=32)
def cached_segmenter(classes, method):
    # One Segmenter per class list keeps the class vectors, so moving the slider is cheap.
    return Segmenter(backbone, list(classes), method=method, pacl=pacl)


def segment(image, class_names, threshold, method=METHOD):
    # The explorer's contract: (scores [C, H, W], mask [H, W]) for the given class names.
    chosen = cached_segmenter(tuple(class_names), method)
    chosen.threshold = threshold
    return chosen.segment_image(image, IMAGE_SIZE)


explorer_names = test_names[:24]
explorer = segmentation_explorer([load_image(files.images_dir / n) for n in explorer_names],
                                 segment, CLASSES, image_names=explorer_names,
                                 threshold=runs[METHOD][0].threshold)
explorer
""")

md("""
The same, drawn once with free-text prompts: the six colours of the synthetic set as classes
("red shape", ...), which no segmentation mask ever named.
""")

code("""
colour_prompts = ["red shape", "green shape", "blue shape", "yellow shape", "purple shape",
                  "orange shape"]
example = load_image(files.images_dir / explorer_names[0])
colour_scores, colour_mask = segment(example, colour_prompts, runs[METHOD][0].threshold)
show(explorer_figure(example, colour_scores, colour_mask, colour_prompts,
                     title=f"{explorer_names[0]}: colour prompts"))
""")

# ================================================================================================
md("""
## 5 · Real images (Colab)

With OpenAI's ViT-B/16 the same code runs on photographs. First a handful of public photos
(COCO val2017 and Wikimedia Commons, listed in `utils.voc.REAL_PHOTOS`), each with the VOC
classes it shows plus a few that it does not, every method side by side. Then, optionally, a
quantitative check on Pascal VOC 2012 val: 20 object classes plus background, boundary pixels
(255) ignored. Offline these cells only say that they were skipped: the course's small CLIP has
only ever seen coloured shapes.
""")

code("""
if BACKBONE == "openai":
    photos, failures = download_images({n: p.url for n, p in REAL_PHOTOS.items()},
                                       DATA_DIR / "photos")
    for failed, reason in failures.items():
        print(f"skipped {failed}: {reason}")
    distractors = ["car", "bird", "bottle"]
    for photo_name, photo in photos.items():
        classes = [*REAL_PHOTOS[photo_name].classes,
                   *(c for c in distractors if c not in REAL_PHOTOS[photo_name].classes)]
        show(plot_methods_side_by_side(photo, {m: segment(photo, classes, 0.5, m)[1]
                                               for m in METHODS}, classes))
else:
    print("Offline: real photos are skipped (the course's CLIP has only seen synthetic shapes).")
""")

md("""
On VOC the entropy threshold is tuned first on a few *train* images (the validation images are
for scoring only). Storing each tuning image's argmax and entropy lets every threshold be tried
without segmenting again. Two scores come out:

- **VOC-21**: 20 classes plus background (the entropy rule finds it);
- **VOC-20**, as the PACL paper reports it: only the object pixels are scored, and no pixel is
  made background (threshold 1). The paper's ViT-B/16 PACL reaches 72.3 mIoU there (the dashed
  line), trained on far larger caption datasets than Flickr8k's 6000 images; expect the embedder
  of notebook 02 to stay well below it.
""")

code("""
def tune_voc_threshold(voc_segmenter, samples):
    # Segment each image once; score every threshold of section 3's curve on it.
    confusions = 0
    for sample in samples:
        probs, _ = voc_segmenter.segment_image(sample.image, IMAGE_SIZE)         # [C, H, W]
        confusions = confusions + confusions_by_threshold(
            torch.from_numpy(probs)[None], torch.from_numpy(sample.mask)[None], 21, thresholds)
    return threshold_with_best_miou(confusions, thresholds)


voc_results = {}
if RUN_VOC:
    voc_dir = prepare_voc(DATA_DIR / "voc")
    num_val = len(read_split(voc_dir, "val", VOC_MAX_IMAGES))
    for method in METHODS:
        voc_segmenter = Segmenter(backbone, list(VOC_PROMPT_NAMES), method=method, pacl=pacl)
        voc_segmenter.threshold = tune_voc_threshold(
            voc_segmenter, load_voc_split(voc_dir, "train", VOC_TUNE_IMAGES))
        tuned = voc_segmenter.threshold

        def predict(image, voc_segmenter=voc_segmenter):
            return voc_segmenter.segment_image(image, IMAGE_SIZE)[1]

        with_background = voc_miou(predict, load_voc_split(voc_dir, "val", VOC_MAX_IMAGES),
                                   total=num_val)
        voc_segmenter.threshold = 1.0                 # VOC-20: never background
        objects_only = voc_miou(predict, load_voc_split(voc_dir, "val", VOC_MAX_IMAGES),
                                include_background=False, total=num_val)
        voc_results[method] = {"threshold": tuned, "VOC-21 mIoU": with_background["mIoU"],
                               "VOC-20 mIoU": objects_only["mIoU"]}
    print(format_table(["method", "threshold", "VOC-21 mIoU", "VOC-20 mIoU"],
                       [(m, *r.values()) for m, r in voc_results.items()]))
    show(plot_miou_bars({m: r["VOC-20 mIoU"] for m, r in voc_results.items()}, reference=0.723,
                        reference_label="PACL paper, ViT-B/16",
                        title=f"Pascal VOC 2012 val ({num_val} images): VOC-20 mIoU"))
else:
    print("Pascal VOC is skipped (RUN_VOC = False: it is a 2 GB download; set it to True on "
          "Colab).")
""")

# ================================================================================================
md("""
## 6 · What goes wrong, and why

The worst cases and the per-class bars above show the failure modes; these are their causes.

- **The patch grid is coarse.** The course CNN scores a 16 × 16 grid for a 64-pixel image, and
  ViT-B/16 a 14 × 14 grid for 224 pixels. Bilinear upsampling makes the masks smooth, but it
  cannot recover a corner or a thin bar that falls between two cells: small shapes shrink or
  vanish, and the edges of big ones are rounded. Look for small objects among the worst cases.
- **Touching and overlapping objects.** Next to a boundary a patch's vector describes both
  objects, so its scores are shared and the argmax can take the wrong side, or the entropy rule
  makes the border background.
- **One threshold for every image.** The entropy rule is a single number tuned on the dev
  images. An image whose probabilities are all less sure than usual loses its objects to
  background; a busier background leaks into a class. The threshold curve shows how much it
  matters for each method.
- **Background is not "nothing" to a CLIP trained on captions.** The entropy rule assumes that a
  background patch matches no class well. On the course CLIP the opposite holds: the raw
  background cells match the shape prompts *better* than the shape cells do. Most cells of the
  grid lie over background and each sees about 40 of the image's 64 pixels, so once averaged into
  the image vector they serve the CLIP loss best by summarising the whole picture, and nothing
  in the loss asks a cell to describe only what lies under it. `bench/patch_probe.py` measures
  it on `make demo`'s models: "a high best-class cosine means shape" scores an AUROC of 0.12 on
  the raw patches (0.5 is chance, lower is inverted), and "low entropy means shape" only 0.54
  (raw) and 0.52 (PACL).
- **PACL only aligns what the backbone knows.** The embedder is a small head on frozen features.
  If the frozen CLIP does not tell two shapes apart, PACL cannot either; its gains come from
  making patches agree with the text, not from new visual knowledge. Notebook 02's localisation
  scores (colour words against shape words) show the same thing. The same script trains a probe
  *with the masks* on the raw patch vectors: it reaches a cell-level mIoU of 0.48 (linear) and
  0.60 (one hidden layer). A method that learns from captions alone should not be expected to
  pass that.
- **Prompts matter.** A class is only as good as its text vector. Words the text encoder saw
  during training, in the templates used to train PACL, work best; the explorer is the quickest
  way to see a prompt change the mask.

Things to try: change the class list or the prompts in the explorer; segment with the raw patches
(`segment(image, classes, threshold, method="raw")`) and compare; train PACL longer in notebook 02
and run this notebook again.
""")


if __name__ == "__main__":
    NOTEBOOK.write()
