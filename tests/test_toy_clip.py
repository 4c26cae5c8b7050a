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
    # a checkpoint trained on every concept may predate the ``without`` field (None: nothing left out)
    assert {"without": None, **meta["recipe"]} == json.loads(json.dumps(TrainConfig().__dict__))
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


def test_training_without_a_concept_drops_its_pictures_and_captions():
    from slugkit.data.minicanvas import CHARACTER_NAMES

    full, _ = toy_clip.training_world(TrainConfig(n_train=600))
    world, options = toy_clip.training_world(TrainConfig(n_train=600, without="captain  zorp"))
    zorp = CHARACTER_NAMES.index("Captain Zorp")
    assert (full.identity == zorp).sum() > 10 and not (world.identity == zorp).any()
    assert len(world) == len(full) - (full.identity == zorp).sum()
    assert set(world.identity[world.identity >= 0]) == set(range(len(CHARACTER_NAMES))) - {zorp}
    assert not any("zorp" in c.lower() for opts in options for c in opts)
    # an object's name is matched as a word: removing "ring" keeps every "a drawing in ... style." caption
    _, no_ring = toy_clip.training_world(TrainConfig(n_train=600, without="ring"))
    assert any("drawing" in c for opts in no_ring for c in opts)
    assert not any(toy_clip.names_concept(c, "ring") for opts in no_ring for c in opts)
    assert toy_clip.checkpoint_name("captain zorp") == "toy-clip-without-captain-zorp.safetensors"
    with pytest.raises(ValueError, match="unknown concept"):
        toy_clip.checkpoint_name("Nobody")


def test_short_training_run_without_a_concept_learns_the_rest(monkeypatch):
    seen = []
    real = toy_clip.training_world
    monkeypatch.setattr(toy_clip, "training_world", lambda cfg: seen.append(real(cfg)) or seen[-1])
    cfg = TrainConfig(n_train=1024, steps=60, batch_size=64, lr=1e-3, warmup=5, eval_every=60, n_eval=300,
                      without="Captain Zorp")
    model, history = train_toy_clip(cfg, progress=False)
    world, options = seen[0]  # what the run trained on: no picture of the concept, no caption naming it
    assert not any("Zorp" in c for opts in options for c in opts) and "Captain Zorp" not in world.captions()
    first = np.mean([h["loss"] for h in history[:3]])
    last = np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.9 * first, (first, last)  # it learns
    # the name's own tokens never reached the model: their embeddings are still the initial ones,
    # while another character's name moved
    from slugkit.adapters.openclip import OpenCLIPAdapter

    tok = OpenCLIPAdapter.from_model(model, toy_clip.ARCH)
    used = set(tok.tokenize(sorted({c for opts in options for c in opts})).flatten().tolist())
    start = toy_clip.create_toy_clip(cfg.seed).token_embedding.weight
    now = model.token_embedding.weight

    def name_tokens(name):
        ids = tok.tokenize([name])[0]
        return [int(i) for i in ids[1:int(ids.argmax())]]

    zorp_only = [i for i in name_tokens("Captain Zorp") if i not in used]
    assert zorp_only and all(torch.equal(now[i], start[i]) for i in zorp_only)
    assert all(not torch.equal(now[i], start[i]) for i in name_tokens("Mira Quell"))


def test_reference_checkpoint_is_loaded_by_name(tmp_path, monkeypatch):
    from slugkit.models.loading import ModelNotAvailableError, is_toy_model, load_clip

    assert is_toy_model("toy-clip-without:Captain Zorp") and not is_toy_model("hf:foo")
    monkeypatch.setenv("SLUGKIT_DATA", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="--without"):
        load_clip("toy-clip-without:Captain Zorp")
    with pytest.raises(ValueError, match="unknown concept"):
        load_clip("toy-clip-without:Nobody")
    model = toy_clip.create_toy_clip(seed=3)
    toy_clip.save_checkpoint(model, tmp_path / toy_clip.checkpoint_name("Captain Zorp"), {"recipe": {}})
    adapter = load_clip("toy-clip-without:captain zorp")
    assert adapter.name == "toy-clip-without:captain zorp"
    first = next(iter(model.state_dict()))
    assert torch.equal(adapter.model.state_dict()[first], model.state_dict()[first].half().float())
