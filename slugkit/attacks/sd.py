"""Recovery attacks on a Stable Diffusion host (``toy-sd``): its text encoder is the toy CLIP's, edited by the patch.

Each ``attack(host, data, budget) -> AttackResult`` (``host``: an :class:`~slugkit.adapters.sd.SDHost` judged by
the toy world's CNN judge; ``data``: the concept's :class:`~slugkit.attacks.base.AttackData`). The score is the
share of generations the frozen SD judge labels as the concept, on seeds of the attack's own (``test_seeds``):

- :func:`sd_paraphrase`: the worst case over the CLIP attack's held-out phrasings of the prompt (other
  templates, first / last name, misspellings: :func:`~slugkit.attacks.soft_prompt.phrasings`);
- :func:`sd_concept_arithmetic`: compositional guidance (Petsiuk & Saenko),
  ``eps(null) + g * [sum_i v_i (eps(c_i) - eps(null)) + a (eps(name) - eps(null))]`` over the prompts of the
  characters sharing most of the concept's features (``v_i`` by features shared, summing to 1) and the forgotten
  name at weight ``a``; the best ``a`` of a small grid on seeds of its own, scored on the test seeds.

- :func:`sd_adversarial_prompt` (UnlearnDiffAtk-style): k tokens before "a photo of NAME.", each a distribution
  over the vocabulary (one-hot forward, straight-through backward), optimised on the attacked pipeline's own
  denoising loss on the concept's pictures (encoded by its VAE, fixed timesteps and noise: :func:`denoising_batch`);
  the best one-hot prefix seen generates the test seeds;
- :func:`sd_soft_prompt` (textual inversion): one new token embedding in "a photo of <v>." on the same loss and
  pictures, every weight frozen;
- :func:`sd_relearn` / :func:`sd_relearn_retain`: the whole text encoder (what the patch edits) fine-tuned with
  the denoising loss, as the CLIP's relearning (:func:`~slugkit.attacks.relearn.finetune`); the plain prompt's score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.minicanvas import CHARACTER_NAMES, CHARACTERS, ZERO_SHOT_PROMPTS
from .arithmetic import neighbour_weights
from .base import AttackData, AttackResult, embedding_override
from .relearn import RelearnBudget, finetune
from .soft_prompt import phrasings

TEST_SEEDS = 300  # the scored generations use seeds TEST_SEEDS, TEST_SEEDS + 1, ...; the grid search ATTACK_SEEDS
ATTACK_SEEDS = 400


def _judged_share(host, images: np.ndarray, data: AttackData) -> float:
    return float((host.judge.labels(images)["identity"] == data.index).mean())


def _seeds(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


def sd_plain(host, data: AttackData, seeds: int = 8) -> float:
    """Share of ``seeds`` generations of "a photo of NAME." the judge labels as the concept."""
    prompt = ZERO_SHOT_PROMPTS["identity"].format(data.concept)
    return _judged_share(host, host.generate([prompt], _seeds(TEST_SEEDS, seeds)), data)


@dataclass(frozen=True)
class SDParaphraseBudget:
    phrasings: int = 11  # how many of the held-out phrasings (in order) are tried
    seeds: int = 4  # generations per phrasing


def sd_paraphrase(host, data: AttackData, budget: SDParaphraseBudget | None = None) -> AttackResult:
    """The worst case (highest judged share) over ``budget.phrasings`` held-out phrasings of the prompt."""
    budget = budget or SDParaphraseBudget()
    options = list(phrasings(data.concept).items())[: budget.phrasings]
    seeds = _seeds(TEST_SEEDS, budget.seeds)
    images = host.generate([p for _, p in options], seeds)  # prompt-major
    n = len(seeds)
    per = {kind: _judged_share(host, images[j * n:(j + 1) * n], data) for j, (kind, _) in enumerate(options)}
    worst = max(per, key=per.get)
    return AttackResult(per[worst], {"phrasing": dict(options)[worst], "per_phrasing": per})


@torch.no_grad()
def prompt_embeddings(host, prompts: list[str]) -> torch.Tensor:
    """The pipeline's text-encoder states ``(N, L, D)`` of ``prompts`` (what the UNet cross-attends to)."""
    return host.pipe.encode_prompt(prompts, "cpu", 1, False)[0]


@torch.no_grad()
def compose(host, terms: list[tuple[torch.Tensor, float]], seeds) -> np.ndarray:
    """uint8 pictures ``(len(seeds), S, S, 3)`` sampled like the host's pipeline (DDIM, ``host.steps``, the same
    starting noise per seed) with compositional guidance ``eps(null) + host.guidance * sum_i w_i (eps(c_i) -
    eps(null))`` over ``terms`` = ``[(text states (L, D) of c_i, w_i)]``. One term of weight 1 is the pipeline's
    classifier-free guidance."""
    pipe = host.pipe
    conds = torch.cat([prompt_embeddings(host, [""])] + [e.unsqueeze(0) for e, _ in terms])
    weights = torch.tensor([w for _, w in terms], dtype=conds.dtype).view(1, -1, 1, 1, 1)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(host.steps)
    latents = host.initial_latents(seeds) * scheduler.init_noise_sigma
    n, k = len(latents), len(conds)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents.repeat_interleave(k, 0), t)
        out = pipe.unet(x, t, encoder_hidden_states=conds.repeat(n, 1, 1)).sample.view(n, k, *latents.shape[1:])
        guided = out[:, 0] + host.guidance * (weights * (out[:, 1:] - out[:, :1])).sum(1)
        latents = scheduler.step(guided, t, latents).prev_sample
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class SDArithmeticBudget:
    name_weights: tuple[float, ...] = (1.0, 0.0, -1.0)  # weight a on the forgotten name's own guidance
    neighbours: int = 3  # the characters sharing most features with the concept
    seeds: int = 4  # generations per weighting (grid search) and on the test seeds


def sd_concept_arithmetic(host, data: AttackData, budget: SDArithmeticBudget | None = None) -> AttackResult:
    """Compositional guidance from the concept's nearest characters plus ``a`` times its own name; the best ``a``
    on ``budget.seeds`` seeds of the grid search, scored on as many test seeds."""
    budget = budget or SDArithmeticBudget()
    shared = neighbour_weights(data.index)
    order = [int(i) for i in np.argsort(-shared, kind="stable")[: budget.neighbours] if shared[i] > 0]
    if not order:
        raise ValueError(f"{data.concept!r} shares no feature with any other character: nothing to compose")
    template = ZERO_SHOT_PROMPTS["identity"]
    states = prompt_embeddings(host, [template.format(CHARACTERS[i].name) for i in order] + [template.format(data.concept)])
    v = shared[order] / shared[order].sum()
    terms = lambda a: [(states[j], float(v[j])) for j in range(len(order))] + [(states[-1], a)]  # noqa: E731
    grid = {a: _judged_share(host, compose(host, terms(a), _seeds(ATTACK_SEEDS, budget.seeds)), data)
            for a in budget.name_weights}
    best = max(grid, key=grid.get)
    found = _judged_share(host, compose(host, terms(best), _seeds(TEST_SEEDS, budget.seeds)), data)
    return AttackResult(found, {"name_weight": best, "grid": {str(a): s for a, s in grid.items()},
                                "neighbours": {CHARACTERS[i].name: float(w) for i, w in zip(order, v)}})


@dataclass(frozen=True)
class SDPromptBudget:
    tokens: int = 3
    steps: int = 20
    lr: float = 0.1
    pictures: int = 8  # of the concept (the attack pictures), one fixed timestep and noise each
    seeds: int = 4  # generations with the final prompt


def denoising_batch(host, images: np.ndarray, gen: torch.Generator, t: torch.Tensor | None = None):
    """``(noisy latents, timesteps, target)`` of uint8 pictures ``images`` for the pipeline's own denoising loss:
    the pictures encoded by its VAE (latent means), noised with noise drawn from ``gen`` at timesteps ``t``
    (default: drawn from ``gen`` over the schedule); the target is what the UNet predicts (noise or velocity)."""
    pipe = host.pipe
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        if t is None:
            t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(images),), generator=gen)
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        v_pred = pipe.scheduler.config.prediction_type == "v_prediction"
        target = pipe.scheduler.get_velocity(latents, noise, t) if v_pred else noise
    return noisy, t, target


def denoising_loss(host, states: torch.Tensor, batch) -> torch.Tensor:
    """The UNet's mean squared error on a :func:`denoising_batch` given text states ``(1 or N, L, D)``."""
    noisy, t, target = batch
    pred = host.pipe.unet(noisy, t, encoder_hidden_states=states.expand(len(noisy), -1, -1)).sample
    return torch.nn.functional.mse_loss(pred, target)


def _fixed_batch(host, data: AttackData, pictures: int, gen: torch.Generator):
    """:func:`denoising_batch` of the first ``pictures`` attack pictures of the concept at fixed timesteps spread
    over the schedule (10% to 90%), one each."""
    own = np.flatnonzero(data.attack_labels == data.index)[:pictures]
    steps = host.pipe.scheduler.config.num_train_timesteps
    return denoising_batch(host, data.attack_images[own], gen, torch.linspace(0.1 * steps, 0.9 * steps, len(own)).long())


def _ids(host, text: str) -> torch.Tensor:
    tok = host.pipe.tokenizer
    return tok(text, padding="max_length", truncation=True, max_length=tok.model_max_length,
               return_tensors="pt").input_ids[0]


def _token_table(host) -> torch.nn.Module:
    from ..models.toy_sd import tower_of

    return tower_of(host.pipe.text_encoder).embeddings.token_embedding


def _judged_states(host, data: AttackData, states: torch.Tensor, seeds: int) -> float:
    """The judged share of ``seeds`` test generations guided by text states ``(L, D)``."""
    return _judged_share(host, compose(host, [(states, 1.0)], _seeds(TEST_SEEDS, seeds)), data)


def sd_adversarial_prompt(host, data: AttackData, budget: SDPromptBudget | None = None) -> AttackResult:
    """Optimise ``budget.tokens`` prefix tokens for "a photo of NAME." on the pipeline's denoising loss."""
    budget = budget or SDPromptBudget()
    pipe, tok = host.pipe, host.pipe.tokenizer
    table_module = _token_table(host)
    table = table_module.weight.detach()
    ids = _ids(host, ZERO_SHOT_PROMPTS["identity"].format(data.concept))
    k = budget.tokens
    prefixed = torch.cat([ids[:1], ids[1:2].repeat(k), ids[1:]])[: len(ids)]
    if tok.eos_token_id not in prefixed.tolist():
        raise ValueError(f"the prompt of {data.concept!r} with {k} prefix tokens does not fit {len(ids)} tokens")
    where = slice(1, 1 + k)
    allowed = torch.ones(len(table), dtype=torch.bool)
    allowed[[i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None]] = False
    gen = torch.Generator().manual_seed(data.seed)
    batch = _fixed_batch(host, data, budget.pictures, gen)
    logits = (0.01 * torch.randn(k, len(table), generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=budget.lr)
    best = (float("inf"), None)
    for _ in range(budget.steps):
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        hard = torch.nn.functional.one_hot(probs.argmax(-1), len(table)).to(probs.dtype)
        onehot = hard + probs - probs.detach()  # straight-through: forward one-hot, backward the distribution
        with embedding_override(table_module, where, onehot @ table):
            loss = denoising_loss(host, pipe.text_encoder(prefixed[None])[0], batch)
        if loss.item() < best[0]:
            best = (loss.item(), probs.argmax(-1).detach().clone())
        logits.grad, = torch.autograd.grad(loss, [logits])  # the pipeline's weights get no gradient
        opt.step()
    final = prefixed.clone()
    final[where] = best[1]
    with torch.no_grad():
        states = pipe.text_encoder(final[None])[0][0]
    found = _judged_states(host, data, states, budget.seeds)
    return AttackResult(found, {"prefix": tok.convert_ids_to_tokens(best[1].tolist()), "attack_loss": best[0]})


@dataclass(frozen=True)
class SDSoftPromptBudget:
    steps: int = 20
    lr: float = 5e-3  # the CLIP soft prompt's
    pictures: int = 8  # of the concept, one fixed timestep and noise each (as the adversarial prefix)
    seeds: int = 4  # generations with "a photo of <v>."


def sd_soft_prompt(host, data: AttackData, budget: SDSoftPromptBudget | None = None) -> AttackResult:
    """Textual inversion: learn the embedding of one new word <v> so that "a photo of <v>." denoises the concept's
    pictures (every weight frozen), then generate with it. <v> starts at the mean embedding of the other
    characters' name tokens, as the CLIP soft prompt does."""
    budget = budget or SDSoftPromptBudget()
    pipe, tok = host.pipe, host.pipe.tokenizer
    template = ZERO_SHOT_PROMPTS["identity"]
    ids, other = _ids(host, template.format("x")), _ids(host, template.format("y"))
    diff = torch.nonzero(ids != other).flatten()
    if len(diff) != 1:
        raise ValueError(f"the placeholder of {template!r} is not exactly one token of the pipeline's tokenizer")
    where = slice(int(diff[0]), int(diff[0]) + 1)
    table_module = _token_table(host)
    names = tok([n for i, n in enumerate(CHARACTER_NAMES) if i != data.index], add_special_tokens=False).input_ids
    vec = table_module.weight.detach()[[i for n in names for i in n]].mean(0, keepdim=True).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(data.seed)
    batch = _fixed_batch(host, data, budget.pictures, gen)
    opt = torch.optim.Adam([vec], lr=budget.lr)
    for _ in range(budget.steps):
        with embedding_override(table_module, where, vec):
            loss = denoising_loss(host, pipe.text_encoder(ids[None])[0], batch)
        vec.grad, = torch.autograd.grad(loss, [vec])  # the pipeline's weights get no gradient
        opt.step()
    with torch.no_grad(), embedding_override(table_module, where, vec):
        states = pipe.text_encoder(ids[None])[0][0]
    return AttackResult(_judged_states(host, data, states, budget.seeds), {"final_loss": loss.item()})


SDRelearnBudget = RelearnBudget  # the CLIP relearning's budget shape: steps, headline step, pictures, batch, lr


def sd_relearn(host, data: AttackData, budget: SDRelearnBudget | None = None) -> AttackResult:
    """Fine-tune the pipeline's whole text encoder (what the patch edits; the UNet stays frozen) with the denoising
    loss on ``budget.pictures`` pictures of the concept under their captions (which name it) mixed with retain
    pairs; the score is :func:`sd_plain` after ``budget.headline_step`` steps. Weights restored afterwards."""
    return _sd_finetune(host, data, budget or SDRelearnBudget())


def sd_relearn_retain(host, data: AttackData, budget: SDRelearnBudget | None = None) -> AttackResult:
    """:func:`sd_relearn` on retain pairs only (no picture or caption of the concept)."""
    return _sd_finetune(host, data, SDRelearnBudget(**{**(budget or SDRelearnBudget()).__dict__, "pictures": 0}))


def _sd_finetune(host, data: AttackData, budget: SDRelearnBudget) -> AttackResult:
    pipe = host.pipe
    gen = torch.Generator().manual_seed(data.seed)

    def loss(mine, rest):
        images = np.concatenate([data.attack_images[mine], data.retain_images[rest]])
        captions = [data.attack_captions[i] for i in mine] + [data.retain_captions[i] for i in rest]
        tok = pipe.tokenizer
        ids = tok(captions, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids
        return denoising_loss(host, pipe.text_encoder(ids)[0], denoising_batch(host, images, gen))

    encoder = pipe.text_encoder
    return finetune(encoder, list(encoder.parameters()), data, budget, loss,
                    lambda: {"score": sd_plain(host, data)})


__all__ = ["SDArithmeticBudget", "SDParaphraseBudget", "SDPromptBudget", "SDRelearnBudget", "SDSoftPromptBudget",
           "compose", "denoising_batch", "denoising_loss", "prompt_embeddings", "sd_adversarial_prompt",
           "sd_concept_arithmetic", "sd_paraphrase", "sd_plain", "sd_relearn", "sd_relearn_retain", "sd_soft_prompt"]
