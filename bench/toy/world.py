"""A small synthetic visual world, rendered by the project.

A *content* is (shape, colour, background, count): ``count`` copies of one
coloured shape on a plain background. Rendering the same content with another
render seed moves, resizes and rotates the shapes: that is how an
``image_rephrase`` shows the same thing re-rendered. There are
8 x 10 x 6 x 4 = 1,920 contents; the *class* of a content is what the embedded
backbone reads from it (shape, colour, count: 320 classes), and contents that share
a class differ only in background (near-twins).

Two render styles. Style 1 (plain): flat shapes on a plain background. Style 2
(clip-art), used for ``image_rephrase`` as the real benchmarks' rephrase images
are generated rather than re-photographed: a diagonally striped background, a
drop shadow under each shape and a dark outline round it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "pentagon"]
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (130, 40, 170),
    "orange": (245, 130, 20),
    "pink": (245, 120, 190),
    "brown": (120, 70, 30),
    "black": (15, 15, 15),
    "gray": (125, 125, 125),
}
BACKGROUNDS = {
    "white": (250, 250, 250),
    "beige": (235, 222, 190),
    "lavender": (215, 200, 240),
    "mint": (195, 240, 215),
    "peach": (250, 210, 180),
    "sky": (190, 220, 250),
}
COUNTS = [1, 2, 3, 4]
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
IMAGE_SIZE = 128


@dataclass(frozen=True)
class Content:
    shape: str
    color: str
    background: str
    count: int

    @property
    def key(self) -> str:
        return f"{self.shape}-{self.color}-{self.background}-{self.count}"

    @property
    def cls(self) -> tuple[str, str, int]:
        """What the embedded backbone reads: (shape, colour, count); near-twins share it."""
        return (self.shape, self.color, self.count)

    @classmethod
    def from_key(cls, key: str) -> Content:
        s, c, b, n = key.split("-")
        return cls(s, c, b, int(n))

    def answer(self, qtype: str) -> str:
        return {"shape": self.shape, "color": self.color, "background": self.background, "count": str(self.count)}[
            qtype
        ]


def all_contents() -> list[Content]:
    return [Content(s, c, b, n) for s in SHAPES for c in COLORS for b in BACKGROUNDS for n in COUNTS]


def _polygon(cx: float, cy: float, r: float, sides: int, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / sides), cy + r * math.sin(rot + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def _draw_shape(
    d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, fill, outline=None, width: int = 0
) -> None:
    line = {"outline": outline, "width": width} if outline is not None else {}
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, **line)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.2, 4, rot + math.pi / 4), fill=fill, **line)
    elif shape == "diamond":
        d.polygon([(cx, cy - r * 1.25), (cx + r * 0.8, cy), (cx, cy + r * 1.25), (cx - r * 0.8, cy)], fill=fill, **line)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.2, 3, rot - math.pi / 2), fill=fill, **line)
    elif shape == "pentagon":
        d.polygon(_polygon(cx, cy, r * 1.1, 5, rot - math.pi / 2), fill=fill, **line)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r * 1.1, 6, rot), fill=fill, **line)
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r * 1.25 if k % 2 == 0 else r * 0.5
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fill, **line)
    elif shape == "cross":
        w = r * 0.38
        c, s = math.cos(rot), math.sin(rot)
        for dx, dy in ((1, 0), (0, 1)):
            hx, hy = (dx * c - dy * s) * r * 1.15, (dx * s + dy * c) * r * 1.15
            px, py = -hy / (r * 1.15) * w, hx / (r * 1.15) * w
            d.polygon(
                [
                    (cx - hx - px, cy - hy - py),
                    (cx - hx + px, cy - hy + py),
                    (cx + hx + px, cy + hy + py),
                    (cx + hx - px, cy + hy - py),
                ],
                fill=fill,
                **line,
            )
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(round(c * f) for c in rgb)


def render(content: Content, variant: int, size: int = IMAGE_SIZE, style: int = 1) -> Image.Image:
    """Deterministic rendering of ``content``; ``variant`` picks positions, sizes, rotation;
    ``style`` 1 (plain) or 2 (clip-art: striped background, shadows, outlines)."""
    if style not in (1, 2):
        raise ValueError(f"render style must be 1 or 2, got {style!r}")
    rng = np.random.default_rng([abs(hash_key(content.key)) % (2**31), variant])
    bg = BACKGROUNDS[content.background]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if style == 2:
        stripe, step = _shade(bg, 0.9), 12
        for k in range(-size, size, step):
            d.polygon([(k, 0), (k + step // 2, 0), (k + step // 2 + size, size), (k + size, size)], fill=stripe)
    cells = rng.permutation(4)[: content.count]
    half = size / 2
    for cell in cells:
        gx, gy = cell % 2, cell // 2
        r = rng.uniform(0.2, 0.3) * half if content.count > 1 else rng.uniform(0.35, 0.55) * half
        if content.count == 1:
            cx, cy = rng.uniform(r + 4, size - r - 4), rng.uniform(r + 4, size - r - 4)
        else:
            cx = gx * half + half / 2 + rng.uniform(-0.12, 0.12) * half
            cy = gy * half + half / 2 + rng.uniform(-0.12, 0.12) * half
        rot = rng.uniform(-0.35, 0.35)
        if style == 2:
            off = max(2.0, r * 0.12)
            _draw_shape(d, content.shape, cx + off, cy + off, r, rot, _shade(bg, 0.6))
            _draw_shape(d, content.shape, cx, cy, r, rot, COLORS[content.color], outline=(20, 20, 20), width=3)
        else:
            _draw_shape(d, content.shape, cx, cy, r, rot, COLORS[content.color])
    return img


def hash_key(key: str) -> int:
    """Stable (process-independent) hash of a string."""
    h = 2166136261
    for ch in key.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def save_render(root: Path, content: Content, variant: int, style: int = 1) -> str:
    """Render to ``root/images/<key>_v<variant>.png`` (style 1) or ``..._v<variant>_s2.png``
    (style 2), once; returns the relative path."""
    rel = f"images/{content.key}_v{variant}{'' if style == 1 else f'_s{style}'}.png"
    path = Path(root) / rel
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        render(content, variant, style=style).save(path)
    return rel
