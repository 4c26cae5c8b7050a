"""Stable Diffusion as a SLUG host: its text encoder is a CLIP text tower.

SLUG runs on the matching CLIP (``toy-clip-hf`` for the toy SD); the patch it makes is scoped to the CLIP's
``text_model`` and moves into ``pipe.text_encoder.text_model`` by parameter name (UNet and VAE untouched).
The host's own metrics are judged generations (:mod:`slugkit.eval.generation`): a picture classifier labels
what the pipeline draws for "a photo of NAME" and the other concept prompts, from a fixed list of seeds.

* :func:`load_toy_sd` — the toy SD of the MiniCanvas world, judged by slugkit's CNN judge;
* :func:`load_sd` — a real pipeline (``sd:runwayml/stable-diffusion-v1-5``, ``sd:stabilityai/stable-diffusion-2-1``
  or ``sd:/local/pipeline/dir``) from the local cache, judged zero-shot by the matching CLIP's image tower
  over the classes you give.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..eval.generation import (DEFAULT_PROMPTS, concept_prompts, frechet_distance, judged_accuracy, prompt_for,
                               report_from)
from ..resources import cache_dir
from .host import Host

DEFAULT_SEEDS = (0, 1, 2)  # one picture per seed and prompt; fixed so every number is reproducible
SEARCH_SEEDS = tuple(range(100, 116))  # --search refine/generation: seeds of their own, the report's held out
# The second search's retain guard (slugkit's own, an option: SDHost(**GUARDED) turns it on with the two rules below): the
# step it returns must keep the judged accuracy of the concept's neighbours, the same attribute's other
# concepts (GUARD_SEEDS each) and every other attribute's (CROSS_GUARD_SEEDS each), within GUARD_TOLERANCE of the
# unedited pipeline's on the same seeds: a little inside the 10-point bar, as these pictures are not the report's.
# The unedited pipeline's pictures do not depend on the concept: judged once per host and seed, and kept in
# $SLUGKIT_CACHE/sd-judged (SDHost.unedited_labels), so a run measures the guard only at the step it would return.
GUARD_SEEDS = (100, 101)
CROSS_GUARD_SEEDS = (100,)
GUARD_TOLERANCE = 0.08
# The second search's step margin (slugkit's own, an option): the smallest lambda that clears the 16 search pictures
# sits on the edge, and a report picture on the wrong side of it keeps the concept (diamond, Ada Thistle: UA 67% and
# 33%); the search returns STEP_MARGIN x that lambda when it clears the search pictures (and the guard, when there is
# one) too, else the lambda.
STEP_MARGIN = 1.3
# The relaxed stop rule (slugkit's own): when no step of the second search leaves 0 of the 16 search pictures as the
# concept, the closest one is accepted if it leaves at most RELAXED_THRESHOLD of them (1 of 16) and passes the guard;
# report.json says so in "relaxed_target". A step that reached 0 but broke the guard is never relaxed.
RELAXED_THRESHOLD = 1 / 16
# The three rules together: the guarded second search of issue 25 (load_toy_sd(**GUARDED), scripts/bench_sd.py --recipe
# guarded). Not the default: no better on the bar over every object and style, and where the first layer is refused it
# costs two to three times the pictures (docs/stable-diffusion.md).
GUARDED = {"guard_tolerance": GUARD_TOLERANCE, "step_margin": STEP_MARGIN, "relaxed_threshold": RELAXED_THRESHOLD}
# Named variants of the toy SD's run, for scripts/bench_sd.py --recipe and docs/stable-diffusion.md (SDHost keywords):
# "plain" = the generation search alone (the default), "margin" = with the step margin, "orthogonal" = the edit
# orthogonal to every other concept's forget gradient, "guarded" = GUARDED (the margin, retain guard, relaxed rule).
SD_RECIPES = {"plain": {}, "margin": {"step_margin": STEP_MARGIN}, "orthogonal": {"project_others": True},
              "guarded": GUARDED}

# real pipelines by name -> the CLIP whose text tower they embed (loadable by slugkit.models.loading.load_clip)
MATCHING_CLIP = {
    "runwayml/stable-diffusion-v1-5": "hf:openai/clip-vit-large-patch14",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "hf:openai/clip-vit-large-patch14",
    "CompVis/stable-diffusion-v1-4": "hf:openai/clip-vit-large-patch14",
    "stabilityai/stable-diffusion-2-1": "hf:laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "stabilityai/stable-diffusion-2-1-base": "hf:laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
}


# ----------------------------------------------------------------------------------------------------
# Judges: what does a generated picture show?
# ----------------------------------------------------------------------------------------------------
class MiniCanvasJudge:
    """The toy world's CNN judge (:mod:`slugkit.models.judge`) behind the judge protocol.

    ``labels(images)`` -> ``{attribute: (N,) class index}``, -1 where the picture is not of the right kind
    (an identity is only read off a portrait, an object/style/colour only off an object picture);
    ``features(images)`` -> ``(N, D)`` pooled CNN features.
    """

    def __init__(self, judge=None):
        from ..models.judge import load_judge

        self.judge = judge if judge is not None else load_judge()

    def labels(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from ..models.judge import predict

        pred = predict(self.judge, images)
        out = {}
        for a in ("identity", "object", "style", "colour"):
            want = 0 if a == "identity" else 1
            out[a] = np.where(pred["kind"] == want, pred[a], -1)
        return out

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        from ..models.judge import to_judge_input

        self.judge.eval()
        return self.judge.features(to_judge_input(images)).numpy()


class CLIPJudge:
    """Zero-shot judge for real pipelines: the CLIP's image tower picks, per attribute, the best of that
    attribute's prompts (``attributes = {attribute: class names}``). Features: image embeddings."""

    def __init__(self, clip, attributes: Mapping[str, Sequence[str]], templates: Mapping[str, str] = DEFAULT_PROMPTS):
        self.clip, self.attributes, self.templates = clip, dict(attributes), dict(templates)
        self._text = None

    def _text_embeddings(self):
        if self._text is None:
            with torch.no_grad():
                self._text = {a: self.clip.encode_text(self.clip.tokenize(
                    [self.templates.get(a, "a photo of {}.").format(n) for n in names]))
                    for a, names in self.attributes.items()}
        return self._text

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        return self.clip.encode_image(self.clip.preprocess(torch.from_numpy(np.ascontiguousarray(images)))).numpy()

    def labels(self, images: np.ndarray) -> dict[str, np.ndarray]:
        img = torch.from_numpy(self.features(images))
        return {a: (img @ t.T).argmax(1).numpy() for a, t in self._text_embeddings().items()}


# ----------------------------------------------------------------------------------------------------
# The host
# ----------------------------------------------------------------------------------------------------
class SDHost(Host):
    """A diffusers ``StableDiffusionPipeline`` whose text encoder is the text tower of ``clip_name``.

    ``attributes``: ``{attribute: class names}`` of the concepts generated and judged; ``judge``: an object
    with ``labels(images)`` and ``features(images)`` (:class:`MiniCanvasJudge`, :class:`CLIPJudge`).
    Generation: ``steps`` DDIM steps, classifier-free ``guidance``, one picture per seed in ``seeds``.
    The second search's options (slugkit's own; see the constants above, :data:`SD_RECIPES` names the measured
    combinations): ``step_margin`` (:data:`STEP_MARGIN` x the step when that also clears the search pictures; 1: the
    smallest step itself), ``project_others`` (the edit orthogonal to every other concept's forget gradient,
    :meth:`other_concepts`), ``guard_tolerance`` (the retain guard, None: off) and ``relaxed_threshold`` (None: the
    stop rule only).
    """

    tower = "text"
    scope = "text_model"
    max_block = None  # every text block reaches the UNet (SD 1.x reads the last hidden state)
    # The UNet reads the concept's word at its own position, but a CLIP caption's gradient flows through the
    # pooled end-of-text token: with the bare name that token sits right after the word (see the README).
    forget_text = "name"
    # The step size the pipeline needs is not the CLIP's (README, "Three ways to choose λ"): the default searches the
    # chosen layer's λ again on judged generations of SEARCH_SEEDS (slugkit's departure; "clip" is the authors').
    search = "generation"
    # True: the edit along the forget gradient made orthogonal to every other concept's (an option, see SD_RECIPES)
    project_others = False

    def __init__(self, pipe, judge, attributes: Mapping[str, Sequence[str]], name: str = "toy-sd",
                 clip_name: str = "toy-clip-hf", seeds: Sequence[int] = DEFAULT_SEEDS, steps: int = 10,
                 guidance: float = 5.0, batch_size: int = 64, templates: Mapping[str, str] = DEFAULT_PROMPTS,
                 size: int | None = None, max_block: int | None = None,
                 guard_tolerance: float | None = None, step_margin: float = 1.0,
                 relaxed_threshold: float | None = None, project_others: bool = False):
        if not seeds:
            raise ValueError("seeds must list at least one seed (one generated picture per seed and prompt)")
        self.pipe, self.judge, self.attributes = pipe, judge, {a: list(n) for a, n in attributes.items()}
        self.name, self.clip_name = name, clip_name
        self.seeds, self.steps, self.guidance, self.batch_size = tuple(seeds), int(steps), float(guidance), batch_size
        self.templates = dict(templates)
        self.size = size or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        self.max_block = max_block
        if guard_tolerance is not None and not 0 <= guard_tolerance < 1:
            raise ValueError(f"guard_tolerance must be in [0, 1) or None (no guard), got {guard_tolerance}")
        self.guard_tolerance = guard_tolerance  # the second search's retain guard; None: forget pictures only
        if not step_margin >= 1:
            raise ValueError(f"step_margin must be >= 1 (1: no margin), got {step_margin}")
        if relaxed_threshold is not None and not 0 <= relaxed_threshold < 1:
            raise ValueError(f"relaxed_threshold must be in [0, 1) or None (the stop rule only), got {relaxed_threshold}")
        self.step_margin, self.relaxed_threshold = float(step_margin), relaxed_threshold
        self.project_others = bool(project_others)  # the edit orthogonal to the other concepts' forget gradients
        self._unedited = {}  # {cache key: {seed: {prompt: judge label}}} of the unedited pipeline (unedited_labels)
        self._baseline = None  # (accuracy dict, cross-domain features) of the unedited pipeline

    # ------------------------------------------------------------------ Host contract
    def tower_module(self):
        """The pipeline's text tower, laid out like ``CLIPModel.text_model`` (``pipe.text_encoder`` itself in
        transformers 5, ``pipe.text_encoder.text_model`` in transformers 4)."""
        from ..models.toy_sd import tower_of

        return tower_of(self.pipe.text_encoder)

    def concept(self, name: str) -> tuple[str, str]:
        """``(attribute, canonical name)`` of a concept this host generates; a clear error otherwise."""
        for a, names in self.attributes.items():
            for n in names:
                if n.lower() == name.strip().lower():
                    return a, n
        listed = "; ".join(f"{a}: {', '.join(n)}" for a, n in self.attributes.items())
        raise ValueError(f"{self.name!r} does not know the concept {name!r}; expected one of {listed}")

    def other_concepts(self, concept: str) -> list[str]:
        """Every concept this host generates but ``concept``, of every attribute (their judged accuracy is IRA and
        CRA): what ``project_others=True`` keeps the edit orthogonal to."""
        _, name = self.concept(concept)
        return [n for names in self.attributes.values() for n in names if n != name]

    # ------------------------------------------------------------------ generation
    def initial_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """One fixed starting noise per seed: ``(len(seeds), C, size/f, size/f)``."""
        c = int(self.pipe.unet.config.in_channels)
        s = self.size // int(self.pipe.vae_scale_factor)
        return torch.cat([torch.randn((1, c, s, s), generator=torch.Generator().manual_seed(int(k)))
                          for k in seeds])

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int] | None = None, progress: bool = False,
                 desc: str = "generating") -> np.ndarray:
        """uint8 pictures ``(len(prompts) * len(seeds), size, size, 3)``, prompt-major, one per (prompt, seed)."""
        seeds = tuple(self.seeds if seeds is None else seeds)
        noise = self.initial_latents(seeds)
        jobs = [(p, k) for p in prompts for k in range(len(seeds))]
        out = []
        for i in tqdm(range(0, len(jobs), self.batch_size), desc=desc, disable=not progress):
            chunk = jobs[i: i + self.batch_size]
            images = self.pipe(prompt=[p for p, _ in chunk], latents=noise[[k for _, k in chunk]].clone(),
                               num_inference_steps=self.steps, guidance_scale=self.guidance, height=self.size,
                               width=self.size, output_type="np").images
            out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
        return np.concatenate(out) if out else np.zeros((0, self.size, self.size, 3), np.uint8)

    def judged(self, attributes: Mapping[str, Sequence[str]] | None = None, seeds: Sequence[int] | None = None,
               progress: bool = True) -> tuple[dict, dict]:
        """Generate every concept prompt of ``attributes`` and judge it.

        Returns ``(accuracy, pictures)``: the eval contract and ``{(attribute, concept): uint8 pictures}``.
        """
        attributes = self.attributes if attributes is None else attributes
        seeds = tuple(self.seeds if seeds is None else seeds)
        items = concept_prompts(attributes, self.templates)
        images = self.generate([p for _, _, p in items], seeds, progress=progress,
                               desc=f"{self.name}: {len(items)} prompts x {len(seeds)} seeds")
        labels = self.judge.labels(images)
        n = len(seeds)
        pictures, judged = {}, {}
        for j, (a, c, _) in enumerate(items):
            pictures[(a, c)] = images[j * n:(j + 1) * n]
            judged[(a, c)] = labels[a][j * n:(j + 1) * n]
        return judged_accuracy(judged, attributes), pictures

    def evaluate(self, progress: bool = True) -> dict:
        """Judged generation accuracy per attribute: ``{attribute: {"top1", "per_concept"}}``."""
        acc, _ = self.judged(progress=progress)
        return acc

    def grid(self, prompts: Sequence[str], seeds: Sequence[int] | None = None, patch=None,
             scale: float = 1.0) -> tuple[dict, dict]:
        """Pictures and judge labels per prompt, with ``patch`` applied at ``scale`` x its step size (if given).

        Returns ``({prompt: uint8 (n_seeds, H, W, 3)}, {prompt: [label per picture]})``; labels are the judge's
        class names (attribute read off the prompt's kind) or "?" when it sees no concept of that kind.
        """
        seeds = tuple(self.seeds if seeds is None else seeds)
        scaled = scaled_patch(patch, scale) if patch is not None and scale != 0 else None
        if scaled is not None:
            self.apply(scaled)
        try:
            images = self.generate(prompts, seeds)
        finally:
            if scaled is not None:
                self.revert(scaled)
        labels = self.judge.labels(images)
        n = len(seeds)
        pics, names = {}, {}
        for j, p in enumerate(prompts):
            attribute = next((a for a, names_ in self.attributes.items()
                              if any(p == self.templates[a].format(c if a == "identity" else c.lower())
                                     for c in names_)), next(iter(self.attributes)))
            classes = self.attributes[attribute]
            pics[p] = images[j * n:(j + 1) * n]
            names[p] = [classes[k] if k >= 0 else "?" for k in labels[attribute][j * n:(j + 1) * n]]
        return pics, names

    # ------------------------------------------------------------------ unlearning metrics
    def _cross_features(self, pictures: dict, attribute: str) -> np.ndarray | None:
        cross = [v for (a, _), v in pictures.items() if a != attribute]
        return self.judge.features(np.concatenate(cross)) if cross else None

    def baseline(self, progress: bool = True) -> tuple[dict, dict]:
        """Accuracy and pictures of the unedited pipeline (computed once, then cached)."""
        from ..patch import applied_patches

        if applied_patches(self.tower_module()):
            raise RuntimeError(f"{self.name!r} has a patch applied; the baseline needs the unedited pipeline")
        if self._baseline is None:
            self._baseline = self.judged(progress=progress)
        return self._baseline

    def report_metrics(self, concept: str, patch, progress: bool = True) -> dict:
        """``ua/ira/cra_before/after`` and ``fid_after`` (judge-feature Fréchet distance of the unrelated-prompt
        generations before vs after, same prompts and seeds) for ``patch`` forgetting ``concept``."""
        attribute, name = self.concept(concept)
        before, pics_before = self.baseline(progress)
        self.apply(patch)
        try:
            after, pics_after = self.judged(progress=progress)
        finally:
            self.revert(patch)
        fb, fa = self._cross_features(pics_before, attribute), self._cross_features(pics_after, attribute)
        fid = frechet_distance(fb, fa) if fb is not None and len(fb) >= 2 else None  # needs unrelated prompts
        out = report_from(before, after, attribute, name, fid)
        out["generation_accuracy"] = {when: {a: round(m["top1"], 4) for a, m in acc.items()}
                                      for when, acc in (("before", before), ("after", after))}
        out["judge_seeds"] = list(self.seeds)
        return out

    def _judged_cache(self) -> Path:
        """``$SLUGKIT_CACHE/sd-judged/<key>.json``: the key hashes everything the unedited pictures' labels depend on
        (pipeline weights, generation settings, prompts, judge)."""
        from ..fingerprint import canonical_json, model_fingerprint

        judge = getattr(self.judge, "judge", None)
        key = {"name": self.name, "text": model_fingerprint(self.tower_module()),
               "unet": model_fingerprint(self.pipe.unet), "vae": model_fingerprint(self.pipe.vae),
               "judge": model_fingerprint(judge) if isinstance(judge, torch.nn.Module) else type(self.judge).__name__,
               "steps": self.steps, "guidance": self.guidance, "size": self.size, "templates": self.templates,
               "attributes": self.attributes}
        digest = hashlib.sha256(canonical_json(key).encode()).hexdigest()[:20]
        return cache_dir() / "sd-judged" / f"{digest}.json"

    def unedited_labels(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """``{prompt: judge labels, one per seed}`` of every concept prompt on the unedited pipeline.

        They do not depend on the concept a run forgets, so each seed is generated once per host (every prompt) and
        kept, in memory and in ``$SLUGKIT_CACHE/sd-judged``; the retain guard's baseline reads them from there.
        """
        from ..patch import applied_patches

        if applied_patches(self.tower_module()):
            raise RuntimeError(f"{self.name!r} has a patch applied; its unedited pictures need the unedited pipeline")
        items = concept_prompts(self.attributes, self.templates)
        path = self._judged_cache()  # its name changes with the weights and settings: memory is keyed by it too
        known = self._unedited.setdefault(path.name, {})
        missing = [int(k) for k in seeds if int(k) not in known]
        if missing and path.exists():
            known.update({int(k): v for k, v in json.loads(path.read_text()).items()})
            missing = [k for k in missing if k not in known]
        if missing:
            images = self.generate([p for _, _, p in items], missing)
            labels, n = self.judge.labels(images), len(missing)
            for i, k in enumerate(missing):
                known[k] = {p: int(labels[a][j * n + i]) for j, (a, _, p) in enumerate(items)}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({str(k): v for k, v in known.items()}))
            tmp.replace(path)
        return {p: np.array([known[int(k)][p] for k in seeds]) for _, _, p in items}

    def generation_evaluator(self, concept: str, clip) -> Callable[..., dict]:
        """``evaluate(edited_tower=None, block=None)`` on judged generations with the CLIP's *current* text tower.

        Each call copies ``clip``'s text-tower weights into the pipeline, generates the forget prompt once per
        seed of ``SEARCH_SEEDS`` (none of them a report seed), judges the pictures and restores the pipeline's
        own weights. It measures the forget concept only (``retain_top1`` and ``utility`` are NaN):
        ``forget_top1`` = ``forget_top5`` = the share of pictures judged as the concept. With a
        ``guard_tolerance``, ``evaluate.guard()`` judges the neighbours' prompts the same way (``{"ira", "cra"}``,
        see :data:`GUARD_SEEDS`), which the second search measures only at the step it would return.
        """
        return JudgedSearch(self, concept, clip)


class JudgedSearch:
    """The second search's evaluator on an :class:`SDHost` (see :meth:`SDHost.generation_evaluator`)."""

    def __init__(self, host: SDHost, concept: str, clip):
        self.host = host
        self.attribute, name = host.concept(concept)
        self.index, self.prompt = host.attributes[self.attribute].index(name), prompt_for(self.attribute, name,
                                                                                          host.templates)
        self.tower = host.tower_module()
        self.source = clip.model.get_submodule(host.scope)
        self.own = copy.deepcopy(self.tower.state_dict())
        if set(self.source.state_dict()) != set(self.own):
            raise ValueError(f"{clip.name!r}'s {host.scope} does not have the layout of {host.name!r}'s text encoder")
        # the neighbours: (attribute, class index, prompt) of the same attribute's other concepts, then the others'
        items = [(a, host.attributes[a].index(n), p) for a, n, p in concept_prompts(host.attributes, host.templates)
                 if (a, n) != (self.attribute, name)]
        self.inside = [x for x in items if x[0] == self.attribute]
        self.cross = [x for x in items if x[0] != self.attribute]
        if host.guard_tolerance is None:
            self.guard = None
        self.guard_metrics, self.guard_tolerance = ("ira", "cra"), host.guard_tolerance
        self.margin, self.relaxed_threshold = host.step_margin, host.relaxed_threshold

    def _judged(self, prompts: Sequence[str], seeds: Sequence[int], attributes: Sequence[str]) -> list[np.ndarray]:
        """The judge's labels of each prompt's pictures (one per seed), with the CLIP's current text tower."""
        self.tower.load_state_dict(self.source.state_dict())
        try:
            images = self.host.generate(list(prompts), seeds)
        finally:
            self.tower.load_state_dict(self.own)
        labels, n = self.host.judge.labels(images), len(seeds)
        return [labels[a][j * n:(j + 1) * n] for j, a in enumerate(attributes)]

    def __call__(self, edited_tower: str | None = None, block: int | None = None) -> dict:
        labels, = self._judged([self.prompt], SEARCH_SEEDS, [self.attribute])
        forget = float((labels == self.index).mean())
        nan = float("nan")
        return {"forget_top1": forget, "forget_top5": forget, "retain_top1": nan, "utility": nan}

    def guard(self) -> dict:
        """``{"ira", "cra"}``: the share of the neighbours' pictures judged as what their prompt names, averaged
        over the same attribute's other concepts (ira) and over every other attribute's concepts (cra)."""
        unedited = all(torch.equal(v, self.own[k]) for k, v in self.source.state_dict().items())
        out = {}
        for key, items, seeds in (("ira", self.inside, GUARD_SEEDS), ("cra", self.cross, CROSS_GUARD_SEEDS)):
            if unedited:  # the unedited pipeline's pictures: judged once per host and seed (SDHost.unedited_labels)
                cached = self.host.unedited_labels(seeds)
                labels = [cached[p] for _, _, p in items]
            else:
                labels = self._judged([p for _, _, p in items], seeds, [a for a, _, _ in items]) if items else []
            out[key] = float(np.mean([(y == k).mean() for (_, k, _), y in zip(items, labels)])) if items else 1.0
        return out


def scaled_patch(patch, factor: float):
    """The same edit with every delta times ``factor`` (``lambda -> factor * lambda``); for the notebook's slider."""
    from ..patch import Patch

    return Patch(deltas={k: v * float(factor) for k, v in patch.deltas.items()}, base_fingerprint=patch.base_fingerprint,
                 model=patch.model, concept=patch.concept, layers=list(patch.layers),
                 step_sizes={k: v * float(factor) for k, v in patch.step_sizes.items()}, metrics={},
                 created_by=patch.created_by, scope=patch.scope)


# ----------------------------------------------------------------------------------------------------
# Loaders (used by slugkit.adapters.host.load_host)
# ----------------------------------------------------------------------------------------------------
def load_toy_sd(path=None, device: str = "cpu", **kwargs) -> SDHost:
    """The toy SD host: ``data/toy-sd.safetensors`` + the toy CLIP text tower, judged by ``data/judge.safetensors``.

    ``kwargs`` go to :class:`SDHost` (e.g. ``seeds``, ``steps``, ``guidance``).
    """
    from ..data.minicanvas import ATTRIBUTES
    from ..models.loading import ModelNotAvailableError
    from ..models.toy_sd import load_toy_sd as load_pipeline

    try:
        pipe = load_pipeline(path, device=device)
        judge = MiniCanvasJudge()
    except FileNotFoundError as err:
        raise ModelNotAvailableError(f"model 'toy-sd' is not available: {err}") from err
    return SDHost(pipe, judge, ATTRIBUTES, name="toy-sd", clip_name="toy-clip-hf", **kwargs)


def _sd_source(spec: str) -> str:
    src = spec[len("sd:"):] if spec.startswith("sd:") else spec
    if not src.strip():
        raise ValueError(f"cannot load {spec!r}: expected 'sd:<Hugging Face repo id or local pipeline directory>'")
    return src.strip()


def load_sd(spec: str, clip_name: str | None = None, attributes: Mapping[str, Sequence[str]] | None = None,
            device: str = "cpu", torch_dtype=torch.float32, judge=None, **kwargs) -> SDHost:
    """A real Stable Diffusion pipeline as a host, from the local cache or a local directory.

    ``spec``: ``"sd:<repo id or directory>"``. ``clip_name``: the matching CLIP (default from
    :data:`MATCHING_CLIP`; required for other repos). ``attributes``: ``{attribute: class names}`` to
    generate and judge (default: the concept alone is not enough — pass the names to tell it apart from).
    The judge defaults to the matching CLIP zero-shot (:class:`CLIPJudge`). Raises
    :class:`~slugkit.models.loading.ModelNotAvailableError` at once when the weights are not local.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ..models.loading import ModelNotAvailableError, _forced_hub_offline, hub_offline, load_clip

    src = _sd_source(spec)
    clip_name = clip_name or MATCHING_CLIP.get(src)
    if clip_name is None:
        raise ValueError(f"no known matching CLIP for {spec!r}; pass clip_name='hf:<repo or dir>' (the CLIP whose "
                         f"text tower is the pipeline's text encoder)")
    local = os.path.isdir(os.path.expanduser(src))
    try:
        with _forced_hub_offline(hub_offline()):
            pipe = StableDiffusionPipeline.from_pretrained(os.path.expanduser(src) if local else src,
                                                           torch_dtype=torch_dtype, safety_checker=None,
                                                           requires_safety_checker=False,
                                                           local_files_only=local or hub_offline())
    except (OSError, EnvironmentError, ValueError) as err:
        if local:
            raise ModelNotAvailableError(f"{src!r} is not a Stable Diffusion pipeline directory "
                                         f"(save one with pipe.save_pretrained): {str(err).splitlines()[0]}") from err
        raise ModelNotAvailableError(
            f"the weights of {src!r} are not in the local Hugging Face cache and downloads are off "
            f"(HF_HUB_OFFLINE=1): download them once while online, or pass 'sd:/path/to/pipeline'") from err
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if attributes is None:
        raise ValueError(f"load_sd({spec!r}) needs attributes={{attribute: [class names]}}: the concepts to "
                         f"generate and judge (the forget concept among them)")
    if judge is None:
        judge = CLIPJudge(load_clip(clip_name, device=device), attributes)
    # SD 2.x reads the penultimate layer: its text encoder has one block fewer than the CLIP
    n_blocks = int(pipe.text_encoder.config.num_hidden_layers)
    kwargs.setdefault("max_block", n_blocks - 1)
    kwargs.setdefault("steps", 25)
    kwargs.setdefault("guidance", 7.5)
    return SDHost(pipe, judge, attributes, name=spec, clip_name=clip_name, **kwargs)
