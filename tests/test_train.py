"""The training loop: schedule, determinism, resume, checkpoints, AMP switch, clipping."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from utils.losses import clip_batch_loss
from utils.models import CLIP, CLIPConfig, clip_parameter_groups
from utils.train import (
    TrainConfig,
    fit,
    latest_checkpoint,
    load_checkpoint,
    warmup_cosine,
)


def make_batches(num_batches: int = 4, batch: int = 8, seed: int = 0) -> list[dict]:
    """Random image/caption pairs where caption ids encode the image's mean colour: learnable."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        labels = torch.randint(0, 4, (batch,), generator=g)
        images = torch.randn(batch, 3, 16, 16, generator=g) * 0.1 + labels.view(-1, 1, 1, 1)
        ids = torch.stack([torch.tensor([2, 10 + int(c), 3]) for c in labels])
        batches.append({"images": images, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(vocab_size=20, image_size=16, embed_dim=8, dropout=0.1))


def train(
    epochs: int, checkpoint_dir=None, resume=False, model=None, loss_fn=clip_batch_loss, **config
) -> tuple[CLIP, object]:
    model = model or tiny_clip()
    history = fit(
        model,
        clip_parameter_groups(model, 1e-3, 1e-3),
        make_batches(),
        loss_fn,
        TrainConfig(epochs=epochs, checkpoint_dir=checkpoint_dir, progress=False, **config),
        resume=resume,
    )
    return model, history


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_training_lowers_the_loss():
    _, history = train(epochs=8)
    losses = [s["loss"] for s in history.steps]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


def test_same_seed_same_weights_on_cpu():
    a, _ = train(epochs=2)
    b, _ = train(epochs=2)
    assert_same_weights(a, b)


def test_resume_continues_exactly(tmp_path):
    uninterrupted, full_history = train(epochs=3, checkpoint_dir=tmp_path / "a")

    # The same run, killed in its third epoch (after 2 epochs x 4 batches + 1 step) ...
    steps = []

    def crash_in_third_epoch(model, batch):
        steps.append(1)
        if len(steps) == 10:
            raise KeyboardInterrupt
        return clip_batch_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(epochs=3, checkpoint_dir=tmp_path / "b", loss_fn=crash_in_third_epoch)
    assert latest_checkpoint(tmp_path / "b").name == "epoch_0002"
    # ... then resumed into a differently initialised model: it ends exactly where the first did.
    resumed, history = train(
        epochs=3, checkpoint_dir=tmp_path / "b", resume=True, model=tiny_clip(seed=123)
    )
    assert_same_weights(uninterrupted, resumed)
    assert [s["loss"] for s in history.steps] == [s["loss"] for s in full_history.steps]


def test_checkpoints_are_complete_and_safe(tmp_path):
    model, _ = train(epochs=2, checkpoint_dir=tmp_path)
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "epoch_0002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "epoch_0001", "epoch_0002"]
    weights = load_file(latest / "model.safetensors")
    torch.testing.assert_close(weights["log_logit_scale"], model.log_logit_scale.detach())
    state = torch.load(latest / "state.pt", weights_only=True)  # no pickled code inside
    assert state["epoch"] == 2
    fresh = tiny_clip(seed=7)
    epoch, history = load_checkpoint(latest, fresh)
    assert epoch == 2 and len(history.steps) == 8
    assert_same_weights(model, fresh)


def _cut_short(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        (lambda c: _cut_short(c / "model.safetensors"), "model.safetensors.*cannot be read"),
        (lambda c: _cut_short(c / "state.pt"), "state.pt cannot be read"),
        (lambda c: (c / "state.pt").unlink(), "state.pt is missing"),
        (lambda c: (c / "history.json").write_text("{cut"), "history.json cannot be read as JSON"),
        (lambda c: (c / "history.json").write_text('{"steps": [], "extra": 1}'),
         "history.json is not a config"),
        (lambda c: torch.save({"epoch": 2}, c / "state.pt"), "state.pt holds no 'optimizer'"),
    ],
)
def test_resuming_from_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, damage, names):
    train(epochs=2, checkpoint_dir=tmp_path)
    damage(tmp_path / "epoch_0002")
    with pytest.raises(OSError if "missing" in names else ValueError,
                       match=f"(?s){tmp_path / 'epoch_0002'}/{names}.*resume=False"):
        train(epochs=3, checkpoint_dir=tmp_path, resume=True)


def test_resuming_with_a_checkpoint_of_another_model_names_the_file(tmp_path):
    train(epochs=1, checkpoint_dir=tmp_path)
    other = CLIP(CLIPConfig(vocab_size=20, image_size=16, embed_dim=12))
    with pytest.raises(ValueError, match="model.safetensors: the weights cannot be read or do "
                                         "not fit this CLIP.*size mismatch"):
        train(epochs=2, checkpoint_dir=tmp_path, resume=True, model=other)


def test_amp_is_off_on_cpu_even_when_asked():
    dtypes = []

    def loss_fn(model, batch):
        loss = clip_batch_loss(model, batch)
        dtypes.append(model.encode_image(batch["images"][:1]).dtype)
        return loss

    model = tiny_clip()
    fit(
        model,
        clip_parameter_groups(model, 1e-3, 1e-3),
        make_batches(1),
        loss_fn,
        TrainConfig(epochs=1, amp=True, progress=False),
    )
    assert dtypes == [torch.float32]


def test_gradient_clipping_bounds_the_gradient_norm():
    # After fit() the last step's gradients are still on the parameters, clipped or not.
    def last_gradient_norm(grad_clip):
        model = tiny_clip()
        fit(
            model,
            clip_parameter_groups(model, 1e-3, 1e-3),
            make_batches(1),
            lambda m, batch: 1e4 * clip_batch_loss(m, batch),
            TrainConfig(epochs=1, grad_clip=grad_clip, progress=False),
        )
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return torch.sqrt(sum((g**2).sum() for g in grads)).item()

    assert last_gradient_norm(None) > 10.0
    assert last_gradient_norm(1.0) == pytest.approx(1.0, rel=1e-4)


def test_several_captions_per_image_equal_encoding_the_repeated_images():
    """Repeating image embeddings per caption gives the loss of encoding each image once per
    caption: the shortcut clip_batch_loss takes must not change the objective."""
    model = tiny_clip().eval()                      # eval: no dropout, BatchNorm in inference
    batch = make_batches(num_batches=1, batch=4)[0]
    owner = torch.tensor([0, 0, 1, 2, 2, 3])
    ids = torch.randint(4, 20, (6, 3))
    positives = owner[:, None] == owner[None, :]
    shortcut = clip_batch_loss(model, {"images": batch["images"], "input_ids": ids,
                                       "attention_mask": torch.ones_like(ids),
                                       "caption_owner": owner, "positives": positives})
    repeated = clip_batch_loss(model, {"images": batch["images"][owner], "input_ids": ids,
                                       "attention_mask": torch.ones_like(ids),
                                       "positives": positives})
    torch.testing.assert_close(shortcut, repeated)
    assert not torch.allclose(shortcut, clip_batch_loss(model, {
        "images": batch["images"][torch.arange(6) % 4], "input_ids": ids,
        "attention_mask": torch.ones_like(ids), "positives": positives}))
