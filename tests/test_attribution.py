"""Captum attributions of the image-text cosine, CKA and mask mass (slugkit.attribution)."""
import json

import numpy as np
import pytest
import torch

from slugkit.adapters.hf_clip import HFCLIPAdapter
from slugkit.adapters.openclip import OpenCLIPAdapter
from slugkit.attribution import (attribute_blocks, attribute_pixels, attribute_tokens, compare, cosine, linear_cka,
                                 mask_mass, mask_share, probe_set)
from slugkit.attribution.similarity import residual_stream, with_block_output
from slugkit.fingerprint import model_fingerprint
from slugkit.models.hf_convert import clip_tokenizer_from_openclip
from slugkit.patch import Patch

from fakes import tiny_hf, tiny_openclip

ZORP = "a photo of Captain Zorp."


def tiny(which):
    if which == "open_clip":
        return OpenCLIPAdapter(tiny_openclip(), name="tiny-oc")
    return HFCLIPAdapter(tiny_hf(), clip_tokenizer_from_openclip(16), name="tiny-hf")


def block_patch(adapter, tower="vision", block=1, scale=0.5, seed=0):
    """A patch that moves one attention weight of ``tower`` block ``block`` by ``scale`` of its norm."""
    info = next(i for i in adapter.candidate_layers() if i.tower == tower and i.block == block)
    p = adapter.parameter(info.name).detach()
    g = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
    return Patch.from_step(adapter.name, "Captain Zorp", info.name, scale * float(p.norm() / g.norm()), g,
                           model_fingerprint(adapter.model))


@pytest.fixture(scope="module")
def pictures():
    probe = probe_set("Captain Zorp", n_images=3)
    probe.images = {g: v[:2] for g, v in probe.images.items()}  # two pictures each keep the tests fast
    return probe


# ---------------------------------------------------------------- completeness on the real toy model
def test_integrated_gradients_complete_on_the_toy_model(pictures):
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip")
    images = pictures.images["forget"]
    att = attribute_pixels(clip, images, ZORP, "ig", n_steps=48)
    assert att.attributions.shape == (2, 3, 64, 64)
    gap = att.score - att.baseline_score
    assert gap.abs().min() > 0.05  # the picture matters: there is something to attribute
    assert att.completeness_error() < 0.05
    total = att.attributions.flatten(1).sum(1)
    assert torch.allclose(total, gap, rtol=0.05, atol=1e-3)
    tokens = attribute_tokens(clip, images, ZORP, n_steps=32)
    assert tokens.completeness_error() < 0.05
    assert [t.replace("</w>", "") for t in tokens.tokens[0][1:5]] == ["a", "photo", "of", "captain"]


# ---------------------------------------------------------------- CKA
def test_linear_cka_identity_orthogonal_and_scale_invariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-10)  # centred: shifts do not count
    assert linear_cka(x, rng.normal(size=(20, 7))) < 0.8  # unrelated representations
    assert linear_cka(x, x * np.r_[np.ones(6), 10 * np.ones(6)]) < 0.99  # anisotropic scaling does count
    assert np.isnan(linear_cka(np.ones((5, 3)), x[:5]))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:10])


# ---------------------------------------------------------------- mask mass
def test_mask_mass_on_constructed_maps():
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 2:6, 1:4] = True  # 12 of 64 pixels
    inside = np.where(mask, 1.0, -3.0)  # all positive mass inside, negative outside does not count
    assert mask_mass(inside, mask)[0] == pytest.approx(1.0)
    assert mask_mass(np.ones((1, 8, 8)), mask)[0] == pytest.approx(12 / 64) == mask_share(mask)[0]
    assert mask_mass(np.where(mask, 0.0, 2.0), mask)[0] == 0.0
    assert np.isnan(mask_mass(-np.ones((1, 8, 8)), mask)[0])
    big = np.kron(mask[0], np.ones((4, 4), bool))[None]  # the same mask at 32 px, maps at 8 px
    assert mask_mass(np.ones((1, 8, 8)), big)[0] == pytest.approx(12 / 64)


# ---------------------------------------------------------------- before/after = apply, revert
def test_attributions_after_apply_then_revert_equal_the_originals(pictures):
    adapter = tiny("open_clip")
    patch = block_patch(adapter)
    images = pictures.images["forget"]
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    runs = []
    for step in ("original", "patched", "reverted"):
        if step == "patched":
            patch.apply(adapter.model)
        runs.append((attribute_pixels(adapter, images, ZORP, "ig", n_steps=8).attributions,
                     attribute_blocks(adapter, images, ZORP, n_steps=4, towers=("vision",)).values))
        if step == "patched":
            patch.revert(adapter.model)
    assert not torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][0], runs[2][0]) and np.array_equal(runs[0][1], runs[2][1])
    assert all(torch.equal(state[k], v) for k, v in adapter.model.state_dict().items())
    assert all(p.requires_grad for p in adapter.model.parameters())  # attribution froze them only inside


@pytest.mark.parametrize("which", ["open_clip", "hf"])
def test_block_attribution_is_the_block_contribution(which, pictures):
    adapter = tiny(which)
    images = pictures.images["retain"]
    att = attribute_blocks(adapter, images, ZORP, n_steps=24)
    assert att.labels == ["vision 0", "vision 1", "text 0", "text 1"]
    pixels = adapter.preprocess(images)
    tokens = adapter.tokenize([ZORP] * 2)
    f = cosine(adapter, pixels, tokens)
    assert torch.allclose(att.score, f, atol=1e-6)
    text = adapter.encode_text(tokens).detach()
    stream = residual_stream(adapter, "vision", pixels)
    with torch.no_grad():
        skipped = with_block_output(adapter, "vision", 1, stream[1], pixels, text)  # block 1 outputs its input
    assert np.allclose(att.values[:, 1], (f - skipped).numpy(), atol=2e-3)
    assert np.abs(att.delta).max() < 2e-2  # IG with 24 steps is nearly exact


# ---------------------------------------------------------------- the report on tiny configs, and the CLI
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
@pytest.mark.parametrize("which,method", [("open_clip", "saliency-nt"), ("hf", "gradshap")])
def test_compare_confines_change_to_the_edited_block(which, method):
    adapter = tiny(which)
    patch = block_patch(adapter, tower="vision", block=1, scale=2.0)
    report = compare(adapter, patch, "Captain Zorp", method=method, n_images=3, n_steps=8, block_steps=4,
                     progress=False)
    assert report.method == method and report.pixels["forget"]["after"].method == method
    out = report.to_dict()
    assert out["edited_block"] == "vision 1" and out["blocks"] == ["vision 0", "vision 1", "text 0", "text 1"]
    for g in ("forget", "retain"):
        cka = out["cka"][g]
        assert cka[0] == pytest.approx(1.0, abs=1e-6)  # upstream of the edit: untouched
        assert report.cka[g][1] < 1 - 1e-4  # the edited block changed
        assert cka[2:] == pytest.approx([1.0, 1.0], abs=1e-6)  # the other tower: untouched
        change = out["relative_change"][g]
        assert change[0] == change[2] == change[3] == 0.0 and change[1] > 0.01
        assert 0 <= out["mask_mass"][g]["uniform"] <= 1
        assert out["block_attribution"][g]["before"] != out["block_attribution"][g]["after"]
    assert np.isfinite(out["completeness_error"])  # its size is tested on the trained toy model
    if which == "open_clip":
        check_figures(report)


def check_figures(report):
    import matplotlib.pyplot as plt

    from slugkit.attribution import figures

    for fig in (figures.heatmap_grid(report, n=1), figures.block_profile(report), figures.cka_figure(report),
                figures.mask_mass_figure(report)):
        assert any(ax.get_xlabel() or ax.get_ylabel() for ax in fig.axes)
        assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes)
        plt.close(fig)


def test_widget_static_fallback_and_controls(pictures):
    import matplotlib.pyplot as plt

    from slugkit.attribution.widget import AttributionExplorer

    adapter = tiny("hf")
    patch = block_patch(adapter, tower="vision", block=1, scale=2.0)
    explorer = AttributionExplorer(adapter, patch, pictures.images["forget"], pictures.masks["forget"][:2],
                                   captions=[ZORP, "a photo of Mira Quell."], n_steps=4, n_samples=2)
    fig = explorer.figure(1, "a photo of Mira Quell.", "saliency-nt")
    titles = [ax.get_title() for ax in fig.axes]
    assert "before: cosine" in titles[1] and "in mask" in titles[1] and "after: cosine" in titles[2]
    before, after = explorer.compute(1, "a photo of Mira Quell.", "saliency-nt")
    assert not torch.equal(before.attributions, after.attributions)
    plt.close(fig)
    box = explorer.widget()
    assert len(box.children) == 3  # pickers, method, figure
    with pytest.raises(ValueError, match="picture index"):
        explorer.compute(5, ZORP)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_cli_attribute_prints_the_json_contract(tmp_path, capsys):
    from slugkit.cli import main
    from slugkit.models.hf_convert import save_hf
    from slugkit.models.loading import load_clip

    save_hf(tiny_hf(), clip_tokenizer_from_openclip(16), tmp_path / "tiny-hf")
    model = f"hf:{tmp_path / 'tiny-hf'}"
    path = block_patch(load_clip(model), tower="text", block=0).save(tmp_path / "p.safetensors")
    assert main(["attribute", "--model", model, "--patch", str(path), "--json", "--n-images", "3",
                 "--n-steps", "8", "--block-steps", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"concept", "method", "n_images", "mask_mass", "completeness_error", "cka",
            "block_attribution"} <= set(out)
    assert out["concept"] == "Captain Zorp" and out["method"] == "ig" and out["n_images"] == 3
    assert set(out["mask_mass"]["forget"]) == {"before", "after", "uniform"}
    assert len(out["cka"]["retain"]) == len(out["block_attribution"]["forget"]["after"]) == 4
    assert out["edited_block"] == "text 0"
    assert out["cka"]["forget"][:2] == [1.0, 1.0]  # a text edit leaves the vision tower alone
    assert main(["attribute", "--model", model, "--patch", str(path), "--concept", "Nobody"]) == 2
