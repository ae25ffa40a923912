"""The synthetic world: scenes of coloured shapes, their rendering and their captions.

Pure functions of a ``random.Random``; file writing lives in ``onetower.data.synthetic``.
Objects sit in distinct cells of a 3x3 grid so spatial relations are never ambiguous, and
every attribute (colour, shape, size, cell) is drawn independently and uniformly, so text
alone carries no information about the colours or counts in an image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: Colour names and their RGB values; the answers of the VQA colour questions.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
#: Backgrounds are light and neutral: no background can be mistaken for an object colour, and
#: each is brighter (in luminance) than every object colour. With a black background too (v1)
#: a shape's pixels flip contrast with the background, and a 2-layer ViT's CLS token stayed at
#: chance on shape for 500 steps where these reach 99% in 100 (single-object probe, lr 1e-3).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (215, 215, 215),
    "beige": (235, 225, 200),
}
GRID = 3
CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
#: Fraction of a cell's free margin by which an object may move off the cell centre (0: none).
POSITION_JITTER = 0.0
#: Bumped whenever rendering or sampling changes, so cached worlds on disk are not reused
#: (2: centred shapes, light backgrounds; 3: NLVR2 statements with no text-only shortcut).
WORLD_VERSION = 3
#: Probability of 1, 2 and 3 objects: few single-object scenes keep captions mostly unique.
COUNT_WEIGHTS = (0.2, 0.4, 0.4)


@dataclass(frozen=True)
class Obj:
    """One shape in a scene, placed in grid cell (``row``, ``col``)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background and 1-3 objects in distinct cells; ``jitter`` holds pixel offsets in [0, 1)."""

    background: str
    objects: tuple[Obj, ...]
    jitter: tuple[tuple[float, float, float], ...]

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum(
            (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
            for o in self.objects
        )


def sample_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    """Draw a scene; every attribute is independent and uniform given the object count."""
    n = rng.choices(range(1, max_objects + 1), weights=COUNT_WEIGHTS[:max_objects])[0]
    cells = rng.sample(range(GRID * GRID), n)
    objects = tuple(
        Obj(
            shape=rng.choice(SHAPES),
            colour=rng.choice(list(COLOURS)),
            size=rng.choice(SIZES),
            row=c // GRID,
            col=c % GRID,
        )
        for c in cells
    )
    jitter = tuple((rng.random(), rng.random(), rng.random()) for _ in objects)
    return Scene(rng.choice(list(BACKGROUNDS)), objects, jitter)


def render(scene: Scene, size: int) -> Image.Image:
    """Draw the scene as an RGB ``size`` x ``size`` image."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / GRID
    for obj, (jx, jy, js) in zip(scene.objects, scene.jitter, strict=True):
        # Shapes sit at their cell's centre (one cell = one patch at the demo's 48 px / 16 px),
        # large ones fill most of it, small ones about two thirds, and only the size is
        # jittered. Shapes that wander inside a patch (world version 1) leave a 2-layer ViT's
        # supervised shape probe at chance for 300+ steps; centred, it needs about 100.
        radius = cell * ((0.44 if obj.size == "large" else 0.30) + 0.02 * js)
        slack = (cell / 2 - radius) * POSITION_JITTER
        cx = (obj.col + 0.5) * cell + (2 * jx - 1) * slack
        cy = (obj.row + 0.5) * cell + (2 * jy - 1) * slack
        fill = COLOURS[obj.colour]
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            r = radius * 0.85
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon(
                [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                fill=fill,
            )
        else:  # diamond
            draw.polygon(
                [(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)],
                fill=fill,
            )
    return img


def relation(a: Obj, b: Obj) -> str:
    """Where ``a`` is relative to ``b`` (horizontal first; cells are distinct)."""
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    return "above" if a.row < b.row else "below"


def where(o: Obj) -> str:
    return f"in the {CELL_NAMES[o.row][o.col]}"


def caption(scene: Scene, rng: random.Random) -> str:
    """A caption naming every object's size, colour and shape and their relations."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    if len(objs) == 1:
        return f"{objs[0].describe()} {where(objs[0])} on a {scene.background} background"
    a, b = objs[0], objs[1]
    text = f"{a.describe()} {relation(a, b)} {b.describe()}"
    if len(objs) == 3:
        text += f" and {objs[2].describe()} {where(objs[2])}"
    return text


#: Number words used by the NLVR2 statements ("exactly two squares").
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
