"""The npe2 manifest: widget, sample data and labels writer resolve and work."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution("napari-sam-stack")


def test_manifest_is_valid_and_commands_resolve(manifest):
    from npe2 import PluginManifest

    assert manifest.name == "napari-sam-stack"
    PluginManifest.model_validate(manifest.model_dump())  # what `npe2 validate` checks
    ids = {c.id for c in manifest.contributions.commands}
    assert ids == {
        "napari-sam-stack.annotator_widget",
        "napari-sam-stack.sample_nuclei",
        "napari-sam-stack.write_labels",
    }
    for command in manifest.contributions.commands:
        assert callable(_resolve(command.python_name))


def _resolve(python_name):
    import importlib

    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_sample_data_is_a_scaled_stack_with_truth(manifest):
    (sample,) = manifest.contributions.sample_data
    layers = _resolve(next(c.python_name for c in manifest.contributions.commands
                           if c.id == sample.command))()
    (image, image_kw, image_type), (truth, truth_kw, truth_type) = layers
    assert (image_type, truth_type) == ("image", "labels")
    assert image.shape == truth.shape == (24, 192, 192)
    assert image_kw["scale"] == (2.0, 0.5, 0.5) and truth_kw["visible"] is False
    assert truth.max() == 12


def test_writer_keeps_labels_and_scale(tmp_path):
    from napari_sam._writer import write_labels
    from napari_sam.io import read_labels_tiff

    labels = np.zeros((3, 16, 20), np.uint32)
    labels[1, 2:5, 3:9] = 7
    (path,) = write_labels(str(tmp_path / "out.tif"), labels, {"scale": (2.0, 0.5, 0.25)})
    back, scale = read_labels_tiff(path)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(scale, (2.0, 0.5, 0.25))


def test_widget_opens_through_the_plugin(viewer_model, qtbot, disk_predictor):
    viewer_model.add_image(np.zeros((4, 32, 32), np.uint16), name="img")
    widget_cls = _resolve("napari_sam._qt.annotator_widget:AnnotatorWidget")
    widget = widget_cls(viewer_model, predictor=disk_predictor)
    qtbot.addWidget(widget)
    ann = widget.annotator
    assert ann is not None and widget.image_combo.currentText() == "img"
    qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    widget.close_annotator()
    assert ann.closed
