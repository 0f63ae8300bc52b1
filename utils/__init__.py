"""CLIP-PACL course package: the tested building blocks the notebooks import.

The ideas, one module each (the README maps each to the notebook section that teaches it):

- ``data``          captions, splits, images, transforms, datasets, batches
- ``tokenization``  a WordPiece tokenizer trained offline, or a pretrained one
- ``models``        image/text encoders, projection heads and the CLIP model
- ``losses``        the symmetric contrastive (InfoNCE) loss of CLIP
- ``positives``     which image-text pairs match, for the loss and for retrieval
- ``train``         a readable training loop with checkpoints
- ``evaluation``    embed a whole split and measure retrieval
- ``metrics``       retrieval recall@K; segmentation IoU, mIoU and pixel accuracy
- ``distributed``   several GPUs: the global batch's negatives in every process's loss
- ``backbones``     frozen CLIPs (the course's, Hugging Face's) behind one interface for PACL
- ``pacl``          PACL: the compatibility function, the vision embedder, the loss
- ``prompts``       prompt templates and the object phrases of captions PACL trains on
- ``segmentation``  open-vocabulary segmentation from patch embeddings

The plumbing, by concern:

- ``sources``       synthetic captioned shapes, Flickr8k, Pascal VOC, verified downloads
- ``storage``       atomic writes, guarded loading, image and feature caches, saved PACLs
- ``plots``         CLIP's figures, segmentation figures, the interactive explorer
- ``course``        notebook helpers, the assignment (exercises, grading, reading submissions),
                    the practice cells' checks, what a Colab notebook rebuilds, the ``make demo``
                    job
"""
