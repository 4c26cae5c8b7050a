"""The paper's figures, tables and numbers in one place, and the verdict words notebook 10 uses.

Numbers are those of Cai, Tan & Asif, "Targeted Unlearning with Single Layer Unlearning Gradient" (ICML 2025,
arXiv 2407.11867), as listed in the project's paper map; accuracies in %, times in seconds, memory in GB.

>>> PAPER_ITEMS[0].ref
'Fig. 1'
>>> verdict(True, partial=False)
'holds'
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperItem:
    """One figure or table of the paper: where it is, what it shows, and where the toy world answers it."""

    ref: str
    shows: str
    toy: str


PAPER_ITEMS = (
    PaperItem("Fig. 1", "the pipeline: gradients once, one layer, step size by binary search", "section 1"),
    PaperItem("Fig. 2", "Pareto fronts (importance vs alignment) and accuracy against the step size", "section 2"),
    PaperItem("CLIP table", "forget, utility and cost of GA, FT, GA+FT, SalUn, SSD and SLUG", "section 3"),
    PaperItem("Appendix: several identities", "identity x name cosine matrices, 1 to 6 identities forgotten jointly",
              "section 4"),
    PaperItem("SD figure", "Stable Diffusion before and after unlearning; other prompts unchanged", "section 5"),
    PaperItem("UnlearnCanvas table", "style and object UA / IRA / CRA, time, memory, storage", "section 6"),
    PaperItem("LLaVA table", "forget accuracy of the name question and utility benchmarks, LLaVA-1.5-7B", "section 7"),
    PaperItem("LLaVA examples", "the name question answered otherwise after unlearning; scene questions kept",
              "section 7"),
    PaperItem("Robustness", "adversarial prompts (UnlearnDiffAtk) and concept arithmetic against SLUG", "section 8"),
    PaperItem("Appendix: other concepts", "ImageNet classes unlearned the same way", "section 9"),
    PaperItem("Appendix: algorithms", "Algorithms 1-3: SLUG, the Pareto search, the binary search", "section 10"),
    PaperItem("Poster objectives", "efficiency, effectiveness, robustness, precision", "section 11"),
)

# CLIP ViT-B/32 (laion400m), mean over 5 identities: forget top-1 on the identity, ImageNet zero-shot top-1,
# CelebA top-1 on other identities (None where the project's sources give no number; the CelebA column comes
# from a secondary summary of the paper).
CLIP_TABLE = {
    "Original": {"forget": 73.0, "imagenet": 60.1, "celeba": None},
    "GA": {"forget": 0.0, "imagenet": 35.88, "celeba": 24.92},
    "GA+FT": {"forget": 0.0, "imagenet": 55.5, "celeba": None},
    "SalUn": {"forget": 0.0, "imagenet": 55.45, "celeba": 26.11},
    "SSD": {"forget": 0.0, "imagenet": 51.84, "celeba": 35.96},
    "SLUG": {"forget": 0.0, "imagenet": 59.96, "celeba": 58.32},
}

# UnlearnCanvas on SD 1.5: UA / IRA / CRA in %, time in s, memory and storage in GB.
UNLEARNCANVAS = {
    "SLUG": {"style": (86.29, 84.59, 88.43), "object": (75.43, 77.50, 81.18), "seconds": 39, "memory_gb": 3.61,
             "storage_gb": 0.04},
    "SalUn": {"style": (86.26, 90.39, 95.08), "object": (86.91, 96.35, 99.59), "seconds": 667, "memory_gb": 30.8,
              "storage_gb": 4.0},
    "ESD": {"seconds": 6163},
}

# LLaVA-1.5-7B, "Elon Musk" and "Taylor Swift": forget accuracy of the name question, before -> after (mean).
LLAVA = {"forget_before": 99.5, "forget_after": 2.5, "gqa": (61.28, 60.71), "mmbench": (62.97, 60.74),
         "mme_perception": (1481.21, 1345.35), "mme_cognition": (323.57, 316.61)}

VERDICTS = ("holds", "holds in part", "does not hold here")


def verdict(holds: bool, partial: bool = False) -> str:
    """'holds' when every part holds, 'holds in part' when some part does, else 'does not hold here'."""
    return VERDICTS[0] if holds else VERDICTS[1] if partial else VERDICTS[2]
