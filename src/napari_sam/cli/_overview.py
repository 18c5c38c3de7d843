"""The demo's overview figure: a picture a person reads at a glance.

Panels of a few z slices (each labelled with its z), every object outlined in
its own colour with its id, the clicks marked on the slice they were made on,
and a table beside the panels: per object the z range found, the true z range
and the 3D Dice. Pillow only (a dependency of scikit-image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ObjectRow:
    """One line of the table: ``obj_id``, click ``(z, row, col)``, z ranges, Dice."""

    obj_id: int
    click: tuple[int, int, int]
    found_z: tuple[int, int] | None
    true_z: tuple[int, int] | None
    dice: float


def object_colours(n: int) -> np.ndarray:
    """``(n + 1, 3)`` uint8 colours, well apart in hue (row 0, the background, unused)."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895) % 1.0  # golden-ratio steps around the wheel
    table = np.array([[0.0, 0.0, 0.0]] + [colorsys.hsv_to_rgb(float(h), 0.8, 1.0) for h in hues])
    return (table * 255).round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font of fixed size
        return ImageFont.load_default()


def overview_zs(labels: np.ndarray, clicks: dict[int, tuple[int, int, int]], n: int = 4):
    """``n`` slices to show: the clicked slices most used, spread through the stack."""
    depth = labels.shape[0]
    clicked = sorted({z for z, _, _ in clicks.values()})
    if len(clicked) >= n:
        picks = [clicked[round(i)] for i in np.linspace(0, len(clicked) - 1, n)]
    else:
        picks = list(clicked) + [
            int(z) for z in np.linspace(0, depth - 1, n + 2).round()[1:-1] if z not in clicked
        ]
    return sorted(set(picks))[:n]


def write_overview(
    path: Path,
    stack: np.ndarray,
    labels: np.ndarray,
    limits: tuple[float, float],
    clicks: dict[int, tuple[int, int, int]],
    rows: list[ObjectRow],
    title: str,
    zoom: int = 2,
) -> None:
    """Write the overview PNG (see the module docstring).

    Parameters
    ----------
    stack, labels : ``(Z, Y, X)`` image and the labels found
    limits : the ``(low, high)`` intensity window shown in grey
    clicks : object id -> ``(z, row, col)`` of its click
    rows : the table, one :class:`ObjectRow` per object
    title : first line of the figure
    zoom : pixels per image pixel (nearest neighbour)
    """
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    n_ids = int(max(labels.max(), max(clicks, default=0)))
    colours = object_colours(n_ids)
    low, high = limits
    zs = overview_zs(labels, clicks)
    panels = []
    for z in zs:
        grey = np.clip((stack[z].astype(np.float32) - low) / max(high - low, 1e-9), 0, 1)
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
        rgb = rgb.repeat(zoom, 0).repeat(zoom, 1)
        lab = labels[z].repeat(zoom, 0).repeat(zoom, 1)
        edges = find_boundaries(lab, mode="inner")  # 2 px wide after the zoom
        rgb[edges] = colours[lab[edges]]
        panels.append((z, rgb, labels[z]))

    font, small = _font(16), _font(14)
    h, w = panels[0][1].shape[:2]
    gap, top, table_w = 10, 48, 360
    width = len(panels) * (w + gap) + gap + table_w
    height = max(top + h + 56, top + 22 * (len(rows) + 3))
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 10), title, fill=(240, 240, 240), font=font)
    for k, (z, rgb, lab) in enumerate(panels):
        x0 = gap + k * (w + gap)
        canvas.paste(Image.fromarray(rgb), (x0, top))
        draw.text((x0, top + h + 6), f"z = {z}", fill=(230, 230, 230), font=font)
        for obj_id in np.unique(lab[lab > 0]):
            rr, cc = np.nonzero(lab == obj_id)
            colour = tuple(int(v) for v in colours[obj_id])
            draw.text((x0 + cc.mean() * zoom - 5, top + rr.mean() * zoom - 8), str(obj_id),
                      fill=colour, font=small)
        for cz, r, c in clicks.values():
            if cz != z:
                continue
            x, y = x0 + (c + 0.5) * zoom, top + (r + 0.5) * zoom
            for colour, width in (((0, 0, 0), 5), ((255, 255, 255), 2)):  # visible on any grey
                draw.line((x - 7, y, x + 7, y), fill=colour, width=width)
                draw.line((x, y - 7, x, y + 7), fill=colour, width=width)
    tx = gap + len(panels) * (w + gap) + 4
    draw.text((tx, top - 4), "id  click z  z found  z true   Dice", fill=(230, 230, 230),
              font=small)
    for i, row in enumerate(rows):
        colour = tuple(int(v) for v in colours[row.obj_id])
        found = f"{row.found_z[0]}-{row.found_z[1]}" if row.found_z else "none"
        true = f"{row.true_z[0]}-{row.true_z[1]}" if row.true_z else "-"
        line = f"{row.obj_id:>2}  {row.click[0]:>7}  {found:>7}  {true:>6}  {row.dice:6.3f}"
        draw.text((tx, top + 18 + 20 * i), line, fill=colour, font=small)
    draw.text((gap, height - 18), "+ = click (one per object, on its largest slice); "
              "outlines: labels after propagation", fill=(170, 170, 170), font=small)
    canvas.save(path)
