"""A shown viewer under Xvfb: the committed label is drawn where the prompt was."""

from __future__ import annotations

import numpy as np

from napari_sam.annotator import Annotator

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, -3.0, 5.0)


def screen_position(viewer, world_yx, canvas_shape):
    """Canvas pixel (row, col) of a world (y, x) position in a 2D view."""
    centre = np.asarray(viewer.camera.center[-2:], dtype=float)
    offset = (np.asarray(world_yx, dtype=float) - centre) * viewer.camera.zoom
    return np.round(offset + np.asarray(canvas_shape[:2]) / 2).astype(int)


def test_committed_label_appears_at_the_prompt(make_napari_viewer, disk_predictor, qtbot):
    viewer = make_napari_viewer(show=True)
    data = np.random.default_rng(0).integers(100, 300, (12, 48, 64)).astype(np.uint16)
    image = viewer.add_image(data, scale=SCALE, translate=TRANSLATE)
    ann = Annotator(viewer, image, predictor=disk_predictor)
    viewer.dims.set_current_step(0, 7)
    ann.add_point((7, 20, 30))
    ann.segment()
    assert ann.commit() == [1]
    labels = ann.labels_layer
    labels.opacity = 1.0
    image.visible = False
    viewer.reset_view()
    qtbot.wait(50)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    colour = np.asarray(labels.get_color(1))[:3] * 255
    world = np.add(TRANSLATE[1:], np.multiply(SCALE[1:], (20, 30)))
    r, c = screen_position(viewer, world, shot.shape)
    np.testing.assert_allclose(shot[r, c, :3], colour, atol=12)
    # a pixel of the image outside the disk is background
    away = np.add(TRANSLATE[1:], np.multiply(SCALE[1:], (20, 45)))
    r2, c2 = screen_position(viewer, away, shot.shape)
    assert np.abs(shot[r2, c2, :3].astype(float) - colour).max() > 40
    # on another slice nothing is drawn there
    viewer.dims.set_current_step(0, 6)
    qtbot.wait(50)
    other = viewer.screenshot(canvas_only=True, flash=False)
    assert np.abs(other[r, c, :3].astype(float) - colour).max() > 40
