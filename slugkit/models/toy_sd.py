"""The toy Stable Diffusion of the MiniCanvas world (``toy-sd``): a real diffusers ``StableDiffusionPipeline``.

* text encoder + tokenizer: the toy CLIP's text tower as a transformers ``CLIPTextModel`` — exactly the
  ``toy-clip-hf`` weights, rebuilt at load time from ``data/toy-clip.safetensors`` (never stored twice), frozen;
* a small ``AutoencoderKL`` (64x64 RGB <-> 4x32x32 latents) and a small ``UNet2DConditionModel`` trained by
  :func:`build` on MiniCanvas captions; both ship in ``data/toy-sd.safetensors`` (fp16, keys ``vae.*`` and
  ``unet.*``, architecture + recipe + measured quality in the metadata).

``slugkit toy build sd`` calls :func:`build`: VAE first (:func:`train_vae`), then the UNet on latents and text
states computed once (:func:`train_unet`), with v-prediction on a zero-terminal-SNR schedule so that colour
comes from the prompt, not from the seed (:class:`ToySDRecipe`). Both stages checkpoint periodically, so an
interrupted build can resume and a time budget (``max_minutes``) can stop a stage early with its best weights.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..resources import cache_dir, data_dir

CHECKPOINT_NAME = "toy-sd.safetensors"
IMAGE_SIZE = 64


@dataclass
class ToySDConfig:
    """Architecture of the toy VAE and UNet (diffusers constructor arguments)."""

    vae_channels: tuple = (16, 32)        # 64x64 -> 32x32 (one down-sampling)
    latent_channels: int = 4
    vae_norm_groups: int = 4
    unet_channels: tuple = (24, 48, 96, 96)  # 32x32, 16x16, 8x8, 4x4
    # cross-attention at 16x16, 8x8 and 4x4. With 8x8 and 4x4 only, the fill pattern (an 8-pixel texture) came from
    # the seed's noise more than from the prompt: styles judged 29% at 1,500 steps and 41% at 3,000; with 16x16
    # too, 50% at 1,450 and 77% at 3,000.
    cross_attention_levels: int = 3
    unet_norm_groups: int = 8
    unet_head_dim: int = 16
    cross_attention_dim: int = 128       # the toy CLIP text width

    def vae_kwargs(self) -> dict:
        n = len(self.vae_channels)
        return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                    up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(self.vae_channels),
                    layers_per_block=1, latent_channels=self.latent_channels, norm_num_groups=self.vae_norm_groups,
                    sample_size=IMAGE_SIZE, mid_block_add_attention=False)

    def unet_kwargs(self) -> dict:
        n, k = len(self.unet_channels), self.cross_attention_levels
        return dict(sample_size=IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1), in_channels=self.latent_channels,
                    out_channels=self.latent_channels, layers_per_block=1,
                    block_out_channels=tuple(self.unet_channels),
                    down_block_types=("DownBlock2D",) * (n - k) + ("CrossAttnDownBlock2D",) * k,
                    up_block_types=("CrossAttnUpBlock2D",) * k + ("UpBlock2D",) * (n - k),
                    cross_attention_dim=self.cross_attention_dim, attention_head_dim=self.unet_head_dim,
                    norm_num_groups=self.unet_norm_groups)


@dataclass
class ToySDRecipe:
    """Training recipe of the shipped checkpoint. Units: optimiser steps of ``batch`` pictures."""

    seed: int = 0
    n_train: int = 24_000
    vae_steps: int = 1_500
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_sample: bool = False  # decode the posterior mean while training (a near-deterministic autoencoder)
    unet_steps: int = 3_000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    ema_decay: float = 0.995
    min_snr_gamma: float = 5.0
    # Zero terminal SNR with v-prediction (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
    # are Flawed"). With SD's own schedule the last training step still holds 7% of the picture, and its mean
    # colour survives the noise: the eps-model then read colour from the seed's noise, not from the prompt.
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    empty_caption_prob: float = 0.1
    checkpoint_every: int = 50
    config: ToySDConfig = field(default_factory=ToySDConfig)


# ----------------------------------------------------------------------------------------------------
# Parts
# ----------------------------------------------------------------------------------------------------
def make_vae(cfg: ToySDConfig = ToySDConfig()):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg.vae_kwargs())


def make_unet(cfg: ToySDConfig = ToySDConfig()):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg.unet_kwargs())


def make_scheduler(kind: str = "ddim", prediction_type: str = "epsilon", zero_terminal_snr: bool = False):
    """The noise schedule the UNet is trained with (DDPM, 1000 steps, scaled-linear betas) as a sampler.

    ``zero_terminal_snr`` rescales the betas so the last step is pure noise; the DDIM sampler then starts at
    that step ("trailing" spacing). The defaults are Stable Diffusion 1.x's (epsilon, non-zero terminal SNR).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if zero_terminal_snr and prediction_type == "epsilon":
        raise ValueError("zero terminal SNR needs v-prediction: noise cannot be predicted from pure noise")
    kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              clip_sample=False, prediction_type=prediction_type, rescale_betas_zero_snr=zero_terminal_snr)
    if kind == "ddpm":
        return DDPMScheduler(**kw)
    if zero_terminal_snr:
        return DDIMScheduler(**kw, timestep_spacing="trailing", steps_offset=1)  # offset unused; 0 warns
    return DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


def _schedule_of(meta: dict) -> dict:
    """The schedule a checkpoint was trained with (checkpoints before v-prediction hold no such key)."""
    recipe = meta.get("recipe") or {}
    return {"prediction_type": recipe.get("prediction_type", "epsilon"),
            "zero_terminal_snr": bool(recipe.get("zero_terminal_snr", False))}


def toy_text_encoder():
    """``(CLIPTextModel, CLIPTokenizer)``: the toy CLIP's text tower with exactly the ``toy-clip-hf`` weights.

    Built from ``data/toy-clip.safetensors`` through :func:`slugkit.models.hf_convert.openclip_to_hf`; frozen,
    eval mode. Context length 16 tokens, width 128.
    """
    from transformers import CLIPTextModel

    from .hf_convert import clip_tokenizer_from_openclip, openclip_to_hf
    from .toy_clip import load_toy_clip

    clip = load_toy_clip()
    hf = openclip_to_hf(clip)
    te = CLIPTextModel(hf.config.text_config)
    tower_of(te).load_state_dict(hf.text_model.state_dict())
    te.requires_grad_(False)
    return te.eval(), clip_tokenizer_from_openclip(int(clip.context_length))


def tower_of(text_encoder):
    """The module laid out like ``CLIPModel.text_model`` inside a ``CLIPTextModel`` (transformers 4 nests it
    as ``.text_model``; in transformers 5 the ``CLIPTextModel`` is that module)."""
    return getattr(text_encoder, "text_model", text_encoder)


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """Text states ``(N, 16, 128)`` exactly as ``StableDiffusionPipeline.encode_prompt`` computes them."""
    out = []
    for i in range(0, len(captions), batch_size):
        ids = tokenizer(captions[i: i + batch_size], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out.append(text_encoder(ids)[0])
    return torch.cat(out) if out else torch.zeros(0)


def images_to_tensor(images) -> torch.Tensor:
    """uint8 ``(B, 64, 64, 3)`` -> float ``(B, 3, 64, 64)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float ``(B, 3, H, W)`` in [-1, 1] -> uint8 ``(B, H, W, 3)``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reconstruct(vae, images, batch_size: int = 128) -> np.ndarray:
    """VAE round trip (posterior mean) of uint8 pictures ``(B, 64, 64, 3)`` -> uint8 ``(B, 64, 64, 3)``."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i: i + batch_size])
        out.append(tensor_to_images(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 image stacks."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------
def _save(tensors: dict, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"slugkit": json.dumps(meta)})
    os.replace(tmp, path)


def save_toy_sd(unet, vae, path: Path, meta: dict) -> Path:
    """Write UNet + VAE (fp16, prefixed ``unet.`` / ``vae.``) and ``meta`` (must hold ``config``)."""
    tensors = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    if unet is not None:
        tensors.update({f"unet.{k}": v for k, v in unet.state_dict().items()})
    _save(tensors, Path(path), meta)
    return Path(path)


def toy_sd_metadata(path: str | Path | None = None) -> dict:
    """The JSON metadata of a toy SD checkpoint (config, recipe, measured quality)."""
    from safetensors import safe_open

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("slugkit", "{}"))


def _config_from_meta(meta: dict) -> ToySDConfig:
    cfg = meta.get("config") or {}
    return ToySDConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


def load_parts(path: str | Path | None = None):
    """``(unet or None, vae, meta)`` from a toy SD checkpoint, fp32, eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"toy SD checkpoint not found at {path}; rebuild it with `slugkit toy build sd`")
    meta = toy_sd_metadata(path)
    cfg = _config_from_meta(meta)
    state = load_file(str(path))
    vae = make_vae(cfg)
    vae.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("vae.")})
    vae.config.scaling_factor = float(meta.get("scaling_factor", 1.0))
    vae.requires_grad_(False)
    unet = None
    if any(k.startswith("unet.") for k in state):
        unet = make_unet(cfg)
        unet.load_state_dict({k[5:]: v.float() for k, v in state.items() if k.startswith("unet.")})
        unet.requires_grad_(False)
        unet.eval()
    return unet, vae.eval(), meta


def load_toy_sd(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The toy SD as a diffusers ``StableDiffusionPipeline`` (DDIM sampler, no safety checker), on ``device``.

    The text encoder is built from the toy CLIP at load time (:func:`toy_text_encoder`).
    """
    from diffusers import StableDiffusionPipeline

    unet, vae, meta = load_parts(path)
    if unet is None:
        raise ValueError(f"toy SD checkpoint {path or data_dir() / CHECKPOINT_NAME} holds no UNet yet "
                         "(the build stopped after the VAE); finish it with `slugkit toy build sd`")
    text_encoder, tokenizer = toy_text_encoder()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler("ddim", **_schedule_of(meta)), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
def _cosine(base: float, step: int, total: int, warmup: int = 50) -> float:
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _resume(path: Optional[Path]):
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    return None


def train_vae(images: np.ndarray, recipe: ToySDRecipe = ToySDRecipe(), progress: bool = True,
              log: Callable[[str], None] | None = None, state_path: Optional[Path] = None,
              max_minutes: float | None = None, eval_images: np.ndarray | None = None):
    """Train the toy ``AutoencoderKL`` on uint8 pictures ``(N, 64, 64, 3)``: L1 + MSE + tiny KL.

    Saves a resumable fp32 state to ``state_path`` every ``recipe.checkpoint_every`` steps. Stops at
    ``recipe.vae_steps`` or after ``max_minutes``. Returns ``(vae, history)``; history holds PSNR on
    ``eval_images`` every 200 steps.
    """
    torch.manual_seed(recipe.seed)
    vae = make_vae(recipe.config)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    start_step, history = 0, []
    saved = _resume(state_path)
    if saved is not None:
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        start_step, history = int(saved["step"]), json.loads(saved["history"])
    gen = torch.Generator().manual_seed(recipe.seed + start_step)
    t0 = time.time()
    vae.train()
    bar = tqdm(range(start_step, recipe.vae_steps), desc="training toy SD VAE", disable=not progress,
               initial=start_step, total=recipe.vae_steps)
    step = start_step
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _cosine(recipe.vae_lr, step, recipe.vae_steps)
        idx = torch.randint(0, len(images), (recipe.vae_batch,), generator=gen).numpy()
        x = images_to_tensor(images[idx])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen) if recipe.vae_sample else post.mode()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + recipe.vae_kl_weight * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        record = {"step": step + 1, "loss": round(loss.item(), 5)}
        done = step + 1 == recipe.vae_steps or (max_minutes and time.time() - t0 > 60 * max_minutes)
        if eval_images is not None and ((step + 1) % 100 == 0 or done):
            vae.eval()
            record["psnr"] = round(psnr(reconstruct(vae, eval_images), eval_images), 2)
            vae.train()
            bar.set_postfix(record)
            if log:
                log(json.dumps(record))
        history.append(record)
        if state_path is not None and ((step + 1) % recipe.checkpoint_every == 0 or done):
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "history": json.dumps(history)}, state_path)
        if done:
            break
    vae.eval()
    vae.requires_grad_(False)
    return vae, history


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Posterior means ``(N, C, 16, 16)`` of uint8 pictures (unscaled)."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="encoding latents", disable=not progress):
        out.append(vae.encode(images_to_tensor(images[i: i + batch_size])).latent_dist.mode())
    return torch.cat(out)


def caption_table(world) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Every caption any sample allows: ``(vocab, option_ids (N, K) with -1 padding, n_options (N,))``."""
    options = [world.all_captions(i) for i in range(len(world))]
    vocab = [""] + sorted({c for opts in options for c in opts})
    index = {c: k for k, c in enumerate(vocab)}
    n_opts = torch.tensor([len(o) for o in options])
    opt_ids = torch.full((len(world), int(n_opts.max())), -1, dtype=torch.long)
    for i, opts in enumerate(options):
        opt_ids[i, : len(opts)] = torch.tensor([index[c] for c in opts])
    return vocab, opt_ids, n_opts


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights per timestep: ``min(SNR, gamma) / SNR`` for epsilon prediction; for
    v-prediction ``min(SNR + 1, gamma) / (SNR + 1)``, i.e. plain v-loss capped on nearly clean steps (the
    usual ``min(SNR, gamma) / (SNR + 1)`` would give the pure-noise step of a zero-SNR schedule no weight)."""
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr + 1, max=gamma) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(latents: torch.Tensor, text_states: torch.Tensor, option_ids: torch.Tensor, n_options: torch.Tensor,
               recipe: ToySDRecipe = ToySDRecipe(), progress: bool = True, log: Callable[[str], None] | None = None,
               state_path: Optional[Path] = None, max_minutes: float | None = None,
               on_checkpoint: Callable[[object, int], None] | None = None):
    """Train the toy UNet (v- or epsilon prediction per the recipe, min-SNR weighting, EMA) on scaled latents.

    latents ``(N, C, 16, 16)`` (already times the VAE scaling factor); text_states ``(V, 16, 128)`` for the caption
    vocabulary (index 0 = the empty caption); option_ids ``(N, K)`` caption indices per sample (-1 padding).
    Returns ``(ema_unet, history)``. ``on_checkpoint(ema_unet, step)`` is called at every checkpoint.
    """
    import copy

    torch.manual_seed(recipe.seed)
    unet = make_unet(recipe.config)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = make_scheduler("ddpm", recipe.prediction_type, recipe.zero_terminal_snr)
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=0.01)
    start_step, history = 0, []
    saved = _resume(state_path)
    if saved is not None:
        unet.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        start_step, history = int(saved["step"]), json.loads(saved["history"])
    gen = torch.Generator().manual_seed(recipe.seed + 7 + start_step)
    t0 = time.time()
    unet.train()
    bar = tqdm(range(start_step, recipe.unet_steps), desc="training toy SD UNet", disable=not progress,
               initial=start_step, total=recipe.unet_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _cosine(recipe.unet_lr, step, recipe.unet_steps, warmup=100)
        b = recipe.unet_batch
        idx = torch.randint(0, len(latents), (b,), generator=gen)
        pick = (torch.rand(b, generator=gen) * n_options[idx]).long()
        cap = option_ids[idx, pick]
        cap = torch.where(torch.rand(b, generator=gen) < recipe.empty_caption_prob, torch.zeros_like(cap), cap)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=text_states[cap]).sample
        goal = sched.get_velocity(z0, noise, t) if recipe.prediction_type == "v_prediction" else noise
        per = ((pred - goal) ** 2).mean((1, 2, 3))
        loss = (per * min_snr_weights(sched, t, recipe.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        record = {"step": step + 1, "loss": round(loss.item(), 5)}
        history.append(record)
        done = step + 1 == recipe.unet_steps or (max_minutes and time.time() - t0 > 60 * max_minutes)
        if (step + 1) % 20 == 0:
            bar.set_postfix(loss=np.mean([h["loss"] for h in history[-20:]]))
        if (step + 1) % recipe.checkpoint_every == 0 or done:
            if log:
                log(json.dumps({"step": step + 1, "loss_avg": round(float(np.mean([h["loss"] for h in history[-100:]])), 5),
                                "minutes": round((time.time() - t0) / 60, 2)}))
            if state_path is not None:
                torch.save({"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                            "step": step + 1, "history": json.dumps(history)}, state_path)
            if on_checkpoint is not None:
                on_checkpoint(ema, step + 1)
        if done:
            break
    ema.eval()
    return ema, history


def build(out_dir: str | Path | None = None, recipe: ToySDRecipe = ToySDRecipe(), progress: bool = True,
          log: Callable[[str], None] | None = None, work_dir: str | Path | None = None,
          vae_minutes: float | None = None, unet_minutes: float | None = None, threads: int | None = None) -> Path:
    """Train the toy SD (VAE, then UNet) and write ``toy-sd.safetensors``; returns the file written.

    ``work_dir`` keeps resumable training states (default: ``~/.cache/slugkit/toy-sd-build``); a rerun resumes.
    The output file is rewritten at every UNet checkpoint, so it is usable while the build runs.
    ``vae_minutes`` / ``unet_minutes`` cap a stage's wall time (the recipe's step counts otherwise);
    ``threads``: torch CPU threads (default all; 1 is faster on a crowded machine).
    """
    from ..data.minicanvas import cached_split

    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    path = Path(out_dir or data_dir()) / CHECKPOINT_NAME
    work = Path(work_dir or cache_dir() / "toy-sd-build")
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    world = cached_split(recipe.n_train, recipe.seed, "train")
    held_out = cached_split(500, recipe.seed, "val").images
    meta = {"config": asdict(recipe.config), "recipe": {k: v for k, v in asdict(recipe).items() if k != "config"}}

    vae, vae_hist = train_vae(world.images, recipe, progress=progress, log=log, state_path=work / "vae.pt",
                              max_minutes=vae_minutes, eval_images=held_out)
    meta["vae_seconds"] = round(time.time() - start, 1)
    meta["vae_psnr_db"] = next((h["psnr"] for h in reversed(vae_hist) if "psnr" in h), None)
    latents = encode_latents(vae, world.images, progress=progress)
    scale = float(1.0 / latents.std())
    meta["scaling_factor"] = scale
    vae.config.scaling_factor = scale
    save_toy_sd(None, vae, path, meta)  # a VAE-only file until the first UNet checkpoint

    text_encoder, tokenizer = toy_text_encoder()
    vocab, opt_ids, n_opts = caption_table(world)
    states = encode_text(text_encoder, tokenizer, vocab)
    unet_start = time.time()

    def export(unet, step):
        m = dict(meta, unet_steps_done=step, unet_seconds=round(time.time() - unet_start, 1),
                 train_seconds=round(time.time() - start, 1))
        save_toy_sd(unet, vae, path, m)

    unet, _ = train_unet(latents * scale, states, opt_ids, n_opts, recipe, progress=progress, log=log,
                         state_path=work / "unet.pt", max_minutes=unet_minutes, on_checkpoint=export)
    return path
