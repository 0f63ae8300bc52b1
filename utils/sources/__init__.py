"""Where the data comes from: the synthetic captioned shapes, Flickr8k and Pascal VOC, and
the verified, resumable downloads they use."""
