"""A tiny CLIP of the MiniCanvas characters whose knowledge is set by hand, for the recovery-attack tests.

Vision: which skin and hair colours a picture shows (10 soft presence detectors, exact colours of the world);
a character is its (skin, hair colour) pair, unique in the cast. Text: the mean of the prompt's token
embeddings, with each character's name tokens set to its colour pattern. Three variants:

* ``present``: the model knows every character (zero-shot is perfect);
* ``hidden``: Captain Zorp's name tokens point to Mira Quell's pattern: the pictures are still told apart,
  only the name is wrong (what an edit of the text tower can leave);
* ``blind``: the vision side sees olive skin as peach, so Captain Zorp's pictures look exactly like Mira
  Quell's: no prompt, weight on the text side or pixel nudge can name one without the other.
"""
from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from slugkit.adapters.base import CLIPAdapter
from slugkit.data.minicanvas import CHARACTERS, HAIR_COLOURS, SKINS, zero_shot_prompts

COLOURS = [("skin", k) for k in SKINS] + [("hair", k) for k in HAIR_COLOURS]


def pattern(character) -> torch.Tensor:
    """The character's colour pattern: skin and (unless bald) hair colour."""
    v = torch.zeros(len(COLOURS))
    v[COLOURS.index(("skin", character.skin))] = 1
    if character.hair != "bald":
        v[COLOURS.index(("hair", character.hair_colour))] = 1
    return v


class Presence(nn.Module):
    """Pixels in [0, 1] ``(B, 3, H, W)`` -> presence of each colour ``(B, 1, 10)``."""

    def __init__(self, blind: bool):
        super().__init__()
        table = [SKINS[k] if part == "skin" else HAIR_COLOURS[k] for part, k in COLOURS]
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32) / 255)
        merge = torch.eye(len(COLOURS))
        if blind:
            olive, peach = COLOURS.index(("skin", "olive")), COLOURS.index(("skin", "peach"))
            merge[olive, olive], merge[olive, peach] = 0, 1
        self.register_buffer("merge", merge)
        self.blind = blind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = ((x[:, None] - self.table[None, :, :, None, None]) ** 2).sum(2)
        frac = torch.exp(-d2 / (8 / 255) ** 2).mean((2, 3))
        seen = torch.sigmoid((frac - 0.005) / 0.001)
        if self.blind:  # all or nothing: no faint trace of the merged colour is left to read
            seen = seen + ((seen > 0.5).float() - seen).detach()  # (gradients still flow, for pixel attacks)
        return (seen @ self.merge).clamp(max=1)[:, None]


class ColourCLIP(nn.Module):
    def __init__(self, variant: str, tokenizer):
        super().__init__()
        if variant not in ("present", "hidden", "blind"):
            raise ValueError(variant)
        self.presence = Presence(blind=variant == "blind")
        gen = torch.Generator().manual_seed(0)
        table = 0.3 * torch.randn(len(tokenizer.encoder), len(COLOURS), generator=gen)
        ids = lambda text: [i for i in tokenizer.encode(text)]  # noqa: E731
        for t in set(sum((ids(p.replace(c.name, "")) for p, c in zip(zero_shot_prompts("identity"), CHARACTERS)), [])):
            table[t] = 0  # template words carry nothing
        taken: dict[int, str] = {}
        for c in CHARACTERS:
            for t in ids(c.name):
                assert taken.setdefault(t, c.name) == c.name, f"{c.name} shares a token with {taken[t]}"
                table[t] = pattern(CHARACTERS[0] if variant == "hidden" and c.name == "Captain Zorp" else c)
        self.token_embedding = nn.Embedding.from_pretrained(table, freeze=False)
        self.text_proj = nn.Linear(len(COLOURS), len(COLOURS), bias=False)
        with torch.no_grad():
            self.text_proj.weight.copy_(torch.eye(len(COLOURS)))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(20.0), dtype=torch.float32))


class ColourAdapter(CLIPAdapter):
    family = "fake"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, variant: str):
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
        super().__init__(ColourCLIP(variant, self.tokenizer).eval(), f"colour-clip-{variant}")

    def tokenize(self, texts):
        return torch.as_tensor(self.tokenizer(list(texts), context_length=16), dtype=torch.long)

    def preprocess(self, images):
        x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
        return (x - 0.5) / 0.5

    def encode_image(self, pixels):
        return F.normalize(self.model.presence(pixels * 0.5 + 0.5)[:, 0] + 1e-6, dim=-1)

    def encode_text(self, tokens):
        emb = self.model.token_embedding(tokens)
        end = tokens.argmax(1, keepdim=True)
        pos = torch.arange(tokens.shape[1])[None]
        keep = ((pos > 0) & (pos < end)).float()[..., None]
        pooled = (emb * keep).sum(1) / keep.sum(1)
        return F.normalize(self.model.text_proj(pooled) + 1e-6, dim=-1)

    def logit_scale(self):
        return self.model.logit_scale.exp()

    def candidate_layers(self, candidates="default"):
        return []

    def blocks(self, tower):
        return [self.model.presence]

    def token_embedding(self):
        return self.model.token_embedding

    def token_strings(self, tokens):
        return [self.tokenizer.decoder.get(int(t), "?") for t in tokens]
