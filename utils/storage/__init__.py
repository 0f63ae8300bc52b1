"""What is kept on disk, and how: atomic writes, guarded loading of saved files, the image array
and PACL feature caches, saving a trained PACL."""
