"""Figures: CLIP's training curves, similarity matrices and retrieval galleries; segmentation
overlays, heatmaps and comparisons; the interactive segmentation explorer."""
