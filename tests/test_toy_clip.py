"""The toy CLIP: a short training run learns; the shipped checkpoint loads and meets the quality bar."""
import json

import numpy as np
import pytest
import torch

from slugkit.models import toy_clip
from slugkit.models.toy_clip import TrainConfig, multi_positive_clip_loss, train_toy_clip

QUALITY = {"identity": 0.90, "object": 0.90, "style": 0.90, "colour": 0.90}


def test_multi_positive_loss_counts_every_true_caption():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = img.clone()
    txt[1] = img[0]  # caption 1 is as true of image 0 as of image 1
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    scale = torch.tensor(10.0)
    assert multi_positive_clip_loss(img, txt, scale, positives) < \
        multi_positive_clip_loss(img, txt, scale, torch.eye(4, dtype=torch.bool))
    # with only the diagonal it is exactly the CLIP loss
    from slugkit.gradients import retain_loss
    assert torch.allclose(multi_positive_clip_loss(img, txt, scale, torch.eye(4, dtype=torch.bool)),
                          retain_loss(img, txt, scale))


def test_short_training_run_learns():
    cfg = TrainConfig(n_train=1024, steps=60, batch_size=64, lr=1e-3, warmup=5, eval_every=60, n_eval=300)
    _, history = train_toy_clip(cfg, progress=False)
    first = np.mean([h["loss"] for h in history[:3]])
    last = np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.9 * first, (first, last)
    # after 60 small steps identity is already well above chance (1/13)
    assert history[-1]["identity_top1"] > 0.12, history[-1]


@pytest.fixture(scope="module")
def shipped():
    from slugkit.models.loading import load_clip

    return load_clip("toy-clip")


def test_shipped_checkpoint_meets_quality_bar(shipped):
    from slugkit.eval.zeroshot import toy_eval

    metrics = toy_eval(shipped)
    for attribute, bar in QUALITY.items():
        assert metrics[attribute]["top1"] >= bar, (attribute, metrics[attribute]["top1"])
    worst = min(metrics["identity"]["per_concept"].values())
    assert worst >= 0.80, metrics["identity"]["per_concept"]


def test_shipped_checkpoint_is_small_and_records_its_recipe():
    path = toy_clip.data_dir() / toy_clip.CHECKPOINT_NAME
    assert path.stat().st_size < 25e6
    meta = toy_clip.checkpoint_metadata(path)
    assert meta["recipe"] == json.loads(json.dumps(TrainConfig().__dict__))
    assert set(meta["zero_shot_top1"]) == set(QUALITY)


def test_corrupt_or_missing_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "toy-clip.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.*slugkit toy build"):
        toy_clip.load_toy_clip(path=bad)
    with pytest.raises(FileNotFoundError, match="slugkit toy build"):
        toy_clip.load_toy_clip(path=tmp_path / "missing.safetensors")


def test_shipped_weights_as_hugging_face_clip_give_the_same_embeddings(shipped):
    from slugkit.data.minicanvas import MiniCanvas, zero_shot_prompts
    from slugkit.models.loading import load_clip

    hf = load_clip("toy-clip-hf")
    world = MiniCanvas(n=16, seed=2, split="test")
    texts = zero_shot_prompts("identity") + world.captions()
    assert torch.equal(hf.tokenize(texts), shipped.tokenize(texts))
    with torch.no_grad():
        img = (hf.encode_image(hf.preprocess(world.images)) - shipped.encode_image(shipped.preprocess(world.images)))
        txt = hf.encode_text(hf.tokenize(texts)) - shipped.encode_text(shipped.tokenize(texts))
    assert img.abs().max() < 1e-4 and txt.abs().max() < 1e-4
