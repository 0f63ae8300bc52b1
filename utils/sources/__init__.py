"""Where the data comes from: the synthetic captioned shapes, Flickr8k, Pascal VOC and a few
real photos, and the verified, resumable downloads they use."""
