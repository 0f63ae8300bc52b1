"""CLIP-PACL course package: the tested building blocks the notebooks import.

One idea per module:

- ``data``          captions, splits, images, transforms, tokenizers, datasets
- ``synthetic``     the embedded "captioned shapes" dataset, written in Flickr8k's layout
- ``download``      resumable verified downloads, atomic zip/tar extraction
- ``flickr8k``      downloading and verifying the real Flickr8k archives (Colab path)
- ``voc``           Pascal VOC 2012 segmentation data and a few real photos (Colab path)
- ``image_cache``   resize images once so a 2-vCPU machine is not bound by JPEG decoding
- ``models``        image/text encoders, projection heads and the CLIP model
- ``losses``        the symmetric contrastive (InfoNCE) loss of CLIP
- ``metrics``       retrieval recall@K; segmentation IoU, mIoU and pixel accuracy
- ``train``         a readable training loop with checkpoints
- ``evaluation``    embed a whole split and measure retrieval
- ``pacl``          PACL: the compatibility function, the vision embedder, the loss
- ``backbones``     frozen CLIPs (the course's, Hugging Face's) behind one interface for PACL
- ``feature_cache`` the frozen backbone's outputs, computed once and kept on disk
- ``prompts``       prompt templates and the object phrases of captions PACL trains on
- ``viz``           plots: curves, similarity matrices, retrieval galleries
- ``viz_segmentation`` segmentation plots: overlays, heatmaps, methods side by side, worst cases
- ``explorer``      the interactive segmentation explorer (ipywidgets 7 and 8)
- ``atomic``        writes that leave the old or the complete new file, never a mixture
- ``saved_files``   reading saved weights and configs, with errors that name the file
- ``notebook``      small helpers the notebooks share (Colab detection, fast mode)
- ``demo``          the course's main job on the synthetic set (``make demo``)
"""
