"""The vocabulary of the MiniCanvas world: its characters, objects, styles and colours, caption templates, and
the concept lookup. Plain Python (no numpy, no torch), so the command line can check a concept name in
milliseconds before it imports anything heavy; :mod:`slugkit.data.minicanvas` draws the pictures.
"""
from __future__ import annotations

from dataclasses import dataclass

OBJECTS = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring", "hexagon", "moon")
STYLES = ("Solid", "Stripes", "Polka Dots", "Checkerboard", "Waves", "Grid", "Zigzag")
COLOURS = {  # name -> RGB; well separated hues, all clearly saturated
    "red": (220, 30, 40),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "blue": (35, 80, 220),
    "purple": (140, 50, 190),
    "pink": (245, 110, 190),
    "cyan": (30, 200, 215),
}
COLOUR_NAMES = tuple(COLOURS)

SKINS = {"peach": (250, 205, 170), "tan": (205, 150, 100), "brown": (125, 80, 50),
         "olive": (150, 175, 90), "lilac": (190, 160, 225)}
HAIR_STYLES = ("bald", "spiky", "bob", "long", "bun", "mohawk")
HAIR_COLOURS = {"black": (25, 25, 30), "blonde": (240, 210, 90), "ginger": (215, 95, 30),
                "white": (245, 245, 245), "blue": (40, 90, 230)}
EYES = ("dots", "round", "sleepy")
ACCESSORIES = ("none", "glasses", "hat", "bowtie", "crown", "mustache", "eyepatch")


@dataclass(frozen=True)
class Character:
    """A fictional character: a name and a fixed combination of visual features."""

    name: str
    skin: str
    hair: str
    hair_colour: str
    eyes: str
    accessory: str
    role: str = "celebrity"  # plays a celebrity, or ("copyrighted") a copyrighted character

    @property
    def features(self) -> dict[str, str]:
        return {"skin": self.skin, "hair": self.hair, "hair_colour": self.hair_colour,
                "eyes": self.eyes, "accessory": self.accessory}


# Every character shares at least one feature with several others (its "neighbours") and differs from
# every other character in at least two features, so identity needs the whole face, not one cue.
CHARACTERS = (
    Character("Mira Quell", "peach", "long", "ginger", "round", "none"),
    Character("Tobias Fenwick", "peach", "spiky", "black", "dots", "glasses"),
    Character("Juno Blackwood", "tan", "bob", "black", "sleepy", "none"),
    Character("Pip Marlowe", "tan", "spiky", "blonde", "round", "bowtie"),
    Character("Ada Thistle", "brown", "bun", "white", "round", "glasses"),
    Character("Rex Calloway", "brown", "bald", "black", "dots", "mustache"),
    Character("Lumi Okafor", "brown", "long", "blonde", "sleepy", "none"),
    Character("Bram Oakes", "peach", "bald", "white", "sleepy", "mustache"),
    Character("Sunny Velasco", "tan", "long", "ginger", "dots", "hat"),
    Character("Nova Kettering", "peach", "bob", "blue", "round", "crown"),
    Character("Captain Zorp", "olive", "mohawk", "ginger", "round", "eyepatch", role="copyrighted"),
    Character("Mecha Moth", "lilac", "spiky", "white", "dots", "hat", role="copyrighted"),
    Character("Glimmer Queen", "lilac", "long", "blue", "sleepy", "crown", role="copyrighted"),
)
CHARACTER_NAMES = tuple(c.name for c in CHARACTERS)

# What each attribute is called in reports and which list holds its class names.
ATTRIBUTES = {"identity": CHARACTER_NAMES, "object": OBJECTS, "style": STYLES, "colour": COLOUR_NAMES}
KIND_OF_ATTRIBUTE = {"identity": "character", "object": "object", "style": "style", "colour": "colour"}

# Caption templates. The zero-shot prompts below are among them.
CHARACTER_TEMPLATES = ("a photo of {name}.", "{name}.", "a portrait of {name}.", "{name} in a picture.")
SMILING_TEMPLATES = ("{name} smiling.", "a photo of {name} smiling.")
OBJECT_TEMPLATES = (
    "a {colour} {object} in {style} style.",
    "a photo of a {object}.",
    "a {colour} {object}.",
    "a {object} in {style} style.",
    "a drawing in {style} style.",
    "something {colour}.",
)
ZERO_SHOT_PROMPTS = {
    "identity": "a photo of {}.",
    "object": "a photo of a {}.",
    "style": "a drawing in {} style.",
    "colour": "something {}.",
}


def zero_shot_prompts(attribute: str) -> list[str]:
    """One prompt per class of ``attribute`` (identity, object, style or colour), in class order."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {sorted(ATTRIBUTES)}")
    return [ZERO_SHOT_PROMPTS[attribute].format(c.lower() if attribute != "identity" else c)
            for c in ATTRIBUTES[attribute]]


def concepts() -> list[dict]:
    """Every forgettable concept of the world: ``{"name", "kind", "attribute"}`` (+ role for characters)."""
    out = [{"name": c.name, "kind": "character", "attribute": "identity", "role": c.role} for c in CHARACTERS]
    for attribute in ("object", "style", "colour"):
        out += [{"name": n, "kind": KIND_OF_ATTRIBUTE[attribute], "attribute": attribute}
                for n in ATTRIBUTES[attribute]]
    return out


def find_concept(name: str) -> dict:
    """The concept called ``name`` (case and runs of whitespace ignored); a ValueError listing the valid names otherwise."""
    wanted = " ".join(str(name).split()).lower()
    for c in concepts():
        if c["name"].lower() == wanted:
            return c
    names = ", ".join(repr(c["name"]) for c in concepts() if c["kind"] == "character")
    raise ValueError(f"unknown concept {name!r} in MiniCanvas; characters are {names}, objects "
                     f"{', '.join(OBJECTS)}, styles {', '.join(STYLES)}, colours {', '.join(COLOUR_NAMES)}")
