"""Assignment code as students write it, shared by the tests of the grader and of the source
reader: a correct exercise (a), and the same code under other names, comments and layout."""

OWN_LOSS = '''
import torch
import torch.nn.functional as F

def clip_loss(image_emb, text_emb, logit_scale, positives):
    """My loss."""
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    targets = positives.to(logits.dtype)   # spread over the positives
    rows = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    columns = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (rows + columns) / 2
'''

# The same code: other names, comments, docstring and layout.
RENAMED_LOSS = '''
import torch
import torch.nn.functional as F
def clip_loss(a, b, s, pos):
    # a comment of my own
    z = s * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    t = pos.to(z.dtype)
    r = -(t / t.sum(1, keepdim=True) * z.log_softmax(1)).sum(1).mean()
    c = -(t / t.sum(0, keepdim=True) * z.log_softmax(0)).sum(0).mean()
    return (r + c) / 2
'''
