"""Issue 19 in the scripted annotator: scribbles, refining a label, "find all like this",
tracking through time and the review of a propagation (napari's Qt-free ViewerModel,
ground-truth stand-in predictors: the pixels are asserted exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotator import Annotator
from stand_ins import OraclePredictor

H, W = 64, 80


def disk(centre, radius, shape=(H, W)):
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def nuclei_stack(n_z=6):
    """(Z, Y, X) truth: nucleus 1 at (20, 20), 2 at (20, 56), 3 at (46, 40) on every
    slice; images whose slices all differ (the oracle knows a slice by its content)."""
    truth = np.zeros((n_z, H, W), np.uint16)
    for k, (centre, radius) in enumerate((((20, 20), 9), ((20, 56), 8), ((46, 40), 10)), 1):
        truth[:, disk(centre, radius)] = k
    images = (truth * 200 + 300 + np.arange(n_z, dtype=np.uint16)[:, None, None])
    return truth, images


@pytest.fixture
def stack3d(viewer_model):
    truth, images = nuclei_stack()
    image = viewer_model.add_image(images, scale=(2.0, 0.5, 0.5), translate=(4.0, -2.0, 3.0),
                                   name="nuclei")
    ann = Annotator(viewer_model, image, predictor=OraclePredictor(truth, images))
    viewer_model.dims.set_current_step(0, 3)
    assert ann.current_slice() == (3,)
    yield viewer_model, ann, truth
    ann.close()


# ============================================================================ scribbles
def test_a_stroke_across_a_nucleus_segments_it_and_commits(stack3d):
    _viewer, ann, truth = stack3d
    ann.add_stroke((3,), [(14, 14), (20, 20), (26, 25)])      # across nucleus 1
    masks = ann.segment()
    assert len(masks) == 1
    np.testing.assert_array_equal(masks[0], truth[3] == 1)
    assert ann.commit() == [1]
    np.testing.assert_array_equal(ann.labels_layer.data[3] == 1, truth[3] == 1)
    assert not ann.labels_layer.data[[0, 1, 2, 4, 5]].any()
    assert len(ann.shapes_layer.data) == 0                    # the stroke was cleared


def test_a_stroke_into_the_background_keeps_the_object_and_says_so(stack3d):
    _viewer, ann, truth = stack3d
    ann.add_stroke((3,), [(20, 20), (20, 32), (20, 38)])      # from nucleus 1 into background
    masks = ann.segment()
    np.testing.assert_array_equal(masks[0], truth[3] == 1)
    assert "outside the mask" in ann.last_message and "crosses into the background" in \
        ann.last_message


def test_background_strokes_and_clicks_join_one_object(stack3d):
    _viewer, ann, truth = stack3d
    ann.add_point((3, 46, 40))                                 # a click on nucleus 3
    ann.add_stroke((3,), [(40, 34), (50, 44)])                 # object stroke on nucleus 3
    ann.add_stroke((3,), [(20, 50), (20, 62)], positive=False)  # background stroke on 2
    assert ann.scribbles.edge_color(False) == "magenta"
    prompts = ann.prompts()
    assert len(prompts.objects) == 1 and prompts.objects[0].source == "scribble"
    masks = ann.segment()
    np.testing.assert_array_equal(masks[0], truth[3] == 3)


def test_strokes_are_saved_and_loaded_with_their_polarity(stack3d, tmp_path):
    """A prompt file keeps the strokes (paths, lines) and which are background strokes."""
    _viewer, ann, truth = stack3d
    ann.add_point((3, 46, 40))
    ann.add_stroke((3,), [(40, 34), (50, 44)])
    ann.add_stroke((3,), [(20, 50), (20, 62)], positive=False, shape_type="line")
    before = ann.segment()
    saved = ann.save_prompts(tmp_path / "strokes.json")
    assert saved.shape_types == ("path", "line")
    assert saved.shape_negative.tolist() == [False, True]
    np.testing.assert_allclose(saved.shapes[1], [[3, 20, 50], [3, 20, 62]])
    ann.clear()
    assert len(ann.shapes_layer.data) == 0
    ann.load_prompts(tmp_path / "strokes.json")
    assert ann.shapes_layer.shape_type == ["path", "line"]
    prompts = ann.prompts()
    assert len(prompts.objects) == 1 and prompts.objects[0].source == "scribble"
    again = ann.segment()
    np.testing.assert_array_equal(again[0], before[0])
    np.testing.assert_array_equal(again[0], truth[3] == 3)


def test_painted_scribbles_prompt_and_clear_with_the_slice(stack3d):
    _viewer, ann, truth = stack3d
    layer = ann.add_scribble_layer()
    assert ann.scribble_layer is layer and layer.metadata["napari_sam"]["role"] == "scribble"
    layer.data[3, 18:23, 53:60] = 1                            # painted on nucleus 2
    layer.data[3, 40:42, 2:12] = 2                             # background
    masks = ann.segment()
    np.testing.assert_array_equal(masks[0], truth[3] == 2)
    ann.clear()
    assert not layer.data[3].any()


def test_batch_strokes_are_objects_of_their_own(stack3d):
    _viewer, ann, truth = stack3d
    ann.add_stroke((3,), [(18, 16), (22, 24)])
    ann.add_stroke((3,), [(44, 36), (48, 44)])
    masks = ann.segment(batch=True)
    assert len(masks) == 2
    np.testing.assert_array_equal(masks[0], truth[3] == 1)
    np.testing.assert_array_equal(masks[1], truth[3] == 3)


def test_bad_strokes_give_messages_not_crashes(stack3d):
    _viewer, ann, _truth = stack3d
    ann.add_stroke((3,), [(-40, -30), (-20, -50)])             # outside the image
    assert ann.segment() == []
    assert "outside the 64x80 image" in ann.last_message or "outside" in ann.last_message
    ann.clear()
    # a stroke whose vertices leave the displayed slice
    full = np.array([[3, 20, 14], [4, 20, 26]], float)
    ann.shapes_layer.add(ann.layers.image_to_layer(ann.shapes_layer, full), shape_type="path")
    assert ann.segment() == []
    assert "not on the displayed slice" in ann.prompts().messages[0]
    with pytest.raises(ValueError, match="shape_type"):
        ann.add_stroke((3,), [(1, 1), (2, 2)], shape_type="rectangle")
    assert not ann.labels_layer.data.any()


# ============================================================================ refine
def test_refine_a_painted_label_replaces_it_on_this_slice_only(stack3d):
    _viewer, ann, truth = stack3d
    labels = ann.labels_layer
    labels.data[3][disk((20, 20), 9) & (np.indices((H, W))[1] < 18)] = 5    # half of nucleus 1
    labels.data[3, 2:6, 2:6] = 5                                        # a stray painted bit
    labels.data[3][disk((20, 20), 9) & (np.indices((H, W))[0] > 26)] = 7    # another label on it
    labels.data[2][disk((20, 20), 9)] = 5                               # label 5 on z=2 too
    before = labels.data.copy()
    labels.selected_label = 5
    masks = ann.refine()
    np.testing.assert_array_equal(masks[0], truth[3] == 1)              # mask + box prompt
    ann.add_point((3, 20, 24))                                          # a click joins it
    assert ann.prompts().objects[0].source == "refine"
    np.testing.assert_array_equal(ann.segment()[0], truth[3] == 1)
    assert ann.commit() == [5]
    after = labels.data
    expected = (truth[3] == 1) & (before[3] != 7)
    np.testing.assert_array_equal(after[3] == 5, expected)              # stray bit cleared
    np.testing.assert_array_equal(after[3] == 7, before[3] == 7)        # label 7 untouched
    np.testing.assert_array_equal(after[[0, 1, 2, 4, 5]], before[[0, 1, 2, 4, 5]])
    assert ann.refiner.session is None and "label 5 replaced" in ann.last_message
    labels.undo()                                                       # one undo step
    np.testing.assert_array_equal(labels.data, before)


def test_refine_the_label_under_the_cursor_and_bad_ids(stack3d):
    viewer, ann, truth = stack3d
    labels = ann.labels_layer
    labels.data[3][truth[3] == 2] = 4
    labels.data[3][truth[3] == 3] = 9
    labels.selected_label = 4
    world = labels.data_to_world((3, 46, 40))                          # over label 9
    viewer.cursor.position = tuple(world)
    ann.refine(at_cursor=True)
    assert ann.refiner.session.label_id == 9
    ann.clear()
    assert ann.refiner.session is None
    assert ann.refine(label_id=42) == []
    assert "label 42 does not exist on z=3" in ann.last_message and "4, 9" in ann.last_message
    labels.selected_label = 6
    viewer.cursor.position = tuple(labels.data_to_world((3, 2, 2)))    # background
    assert ann.refine() == [] and "no label to refine" in ann.last_message
    assert ann.refiner.session is None


# ============================================================================ similar
def _similar_scene(viewer):
    from test_similar import FeatureOracle, _scene

    labels, image, channel = _scene()
    layer = viewer.add_image(image, name="scene")
    ann = Annotator(viewer, layer, predictor=FeatureOracle(labels, image, channel))
    return ann, labels


def test_find_all_like_this_reviews_reranks_and_commits(viewer_model):
    ann, truth = _similar_scene(viewer_model)
    for true_id in (1, 2, 4):                                           # three exemplars
        ann.labels_layer.data[truth == true_id] = 10 + true_id
    existing = ann.labels_layer.data.copy()
    res = ann.find_similar([11, 12, 14])
    shown = np.asarray(ann.everything_layer.data)
    found = {int(np.unique(truth[shown == c])[0]) for c in np.unique(shown[shown > 0])}
    assert found == {3, 5}                                              # kind A only
    assert ann.state.everything is not None and "2 of 6 candidates" in ann.last_message
    ann.similar_threshold = 0.0                                         # re-ranked, no rerun
    shown = np.asarray(ann.everything_layer.data)
    assert len(np.unique(shown[shown > 0])) == len(res.candidates) == 6
    ann.similar_threshold = 0.5
    ids = ann.commit_everything()
    assert len(ids) == 2 and min(ids) == 15                             # new ids
    out = ann.labels_layer.data
    np.testing.assert_array_equal(np.isin(out, ids), np.isin(truth, [3, 5]))
    np.testing.assert_array_equal(out[existing > 0], existing[existing > 0])
    ann.labels_layer.undo()
    np.testing.assert_array_equal(ann.labels_layer.data, existing)
    assert ann.similar.result is None                                  # the review ended


def test_find_all_like_this_bad_exemplars(viewer_model):
    ann, truth = _similar_scene(viewer_model)
    assert ann.find_similar() is None and "has no labels" in ann.last_message
    ann.labels_layer.data[truth == 1] = 3
    assert ann.find_similar([8]) is None
    assert "label(s) [8] do not exist" in ann.last_message and "labels there: 3" in \
        ann.last_message
    ann.labels_layer.selected_label = 3                                # the default exemplar
    assert ann.find_similar(threshold=0.5) is not None
    with pytest.raises(ValueError, match="threshold"):
        ann.similar_threshold = 2.0


# ============================================================================ tracking
def moving_movie(n_t=8, n_z=None):
    """(T, Y, X) truth of disk 1 moving 2 px/frame and still disk 2 (or (T, Z, Y, X)
    with them at z = 1); images whose frames all differ."""
    truth = np.zeros((n_t, H, W), np.uint16)
    for t in range(n_t):
        truth[t][disk((30, 14 + 2 * t), 7)] = 1
        truth[t][disk((10, 66), 5)] = 2
    if n_z is None:
        return truth, truth * 100 + 50 + np.arange(n_t, dtype=np.uint16)[:, None, None]
    full = np.zeros((n_t, n_z, H, W), np.uint16)
    full[:, 1] = truth
    images = full * 100 + 50 + np.arange(n_t * n_z, dtype=np.uint16).reshape(n_t, n_z, 1, 1)
    return full, images


def test_track_through_t_of_a_tyx_movie_keeps_ids(viewer_model):
    truth, images = moving_movie()
    layer = viewer_model.add_image(images, axis_labels=("t", "y", "x"), name="movie")
    ann = Annotator(viewer_model, layer, predictor=OraclePredictor(truth, images))
    viewer_model.dims.set_current_step(0, 2)
    ann.add_point((2, 30, 18))
    ann.segment()
    ann.commit(label_id=7)
    ann.add_point((2, 10, 66))
    ann.segment()
    ann.commit(label_id=8)
    before_undo = ann.labels_layer.data.copy()
    written = ann.propagate(label_id=[7, 8])  # axis labels say t: tracking
    assert sorted(written[7]) == sorted(written[8]) == list(range(8))
    out = ann.labels_layer.data
    for t in range(8):
        np.testing.assert_array_equal(out[t] == 7, truth[t] == 1)
        np.testing.assert_array_equal(out[t] == 8, truth[t] == 2)
    assert "tracked" in ann.last_message and "along t" in ann.last_message
    ann.labels_layer.undo()
    np.testing.assert_array_equal(ann.labels_layer.data, before_undo)
    ann.close()


def test_track_through_t_of_tzyx_writes_the_displayed_z_only(viewer_model):
    full, images = moving_movie(n_t=6, n_z=3)
    layer = viewer_model.add_image(images, name="movie4d")
    flat = OraclePredictor(full.reshape(-1, H, W), images.reshape(-1, H, W))
    ann = Annotator(viewer_model, layer, predictor=flat)
    viewer_model.dims.set_current_step(0, 4)
    viewer_model.dims.set_current_step(1, 1)
    assert ann.current_slice() == (4, 1)
    ann.labels_layer.data[0, 1, 0, 0] = 5                              # an existing label stays
    ann.add_point((4, 1, 30, 22))
    ann.segment()
    (lid,) = ann.commit()
    ann.propagation_axis = "t"
    ann.propagate(direction="down")
    out = ann.labels_layer.data
    for t in range(5):
        np.testing.assert_array_equal(out[t, 1] == lid, full[t, 1] == 1)
    assert not (out[:, [0, 2]] == lid).any() and not (out[5] == lid).any()
    assert out[0, 1, 0, 0] == 5
    ann.close()


def test_tracking_bad_axes_and_2d(viewer_model):
    truth, images = moving_movie()
    layer = viewer_model.add_image(images, name="movie")
    ann = Annotator(viewer_model, layer, predictor=OraclePredictor(truth, images))
    with pytest.raises(ValueError, match="axis 5 does not exist"):
        ann.propagate(axis=5)
    with pytest.raises(ValueError, match="displayed axes"):
        ann.propagate(axis=-1)
    with pytest.raises(ValueError, match="not an axis of image"):
        ann.propagation_axis = "c"
    assert ann.propagate(axis="t") is None and "nothing to track" in ann.last_message
    flat = viewer_model.add_image(images[0], name="flat")
    ann2 = Annotator(viewer_model, flat, predictor=OraclePredictor(truth, images))
    with pytest.raises(ValueError, match="is 2D"):
        ann2.propagate(axis="t")
    assert not ann.labels_layer.data.any() and not ann2.labels_layer.data.any()
    ann.close()
    ann2.close()


# ============================================================================ review
class DoubtfulOracle(OraclePredictor):
    """The oracle, with a low score on slice 4 (accepted, doubtful) and nothing on 1."""

    def answer(self, z, target, points, labels, box, mask):
        if z == 1:
            return np.zeros(self.labels.shape[1:], bool), self.miss_score
        out, score = super().answer(z, target, points, labels, box, mask)
        return out, (0.6 if z == 4 else score)


def test_review_lists_doubtful_slices_and_jumps_to_them(viewer_model):
    truth, images = nuclei_stack(n_z=8)
    layer = viewer_model.add_image(images, scale=(2.0, 1.0, 1.0), name="nuclei")
    ann = Annotator(viewer_model, layer, predictor=DoubtfulOracle(truth, images))
    steps = []
    ann.state.events.review.connect(lambda review, old=None: steps.append(review))
    viewer_model.dims.set_current_step(0, 6)
    ann.add_point((6, 46, 40))
    ann.segment()
    (lid,) = ann.commit()
    ann.propagate()
    review = ann.review
    assert not review.running and review.axis == "z" and review.n_slices == 7  # z=0 not reached
    assert any(r.running for r in steps)                               # listed while it ran
    by_slice = {d.slice_index: d for d in review.doubts}
    assert set(by_slice) == {(1,), (4,)}
    assert by_slice[(1,)].stopped and "stopped" in by_slice[(1,)].reason
    assert "low score 0.60" in by_slice[(4,)].reason
    assert review.slices == [(1,), (4,)]
    viewer_model.dims.set_current_step(0, 7)
    doubt = ann.next_doubtful()                                        # wraps around to z=1
    assert doubt.slice_index == (1,) and ann.current_slice() == (1,)
    assert ann.next_doubtful().slice_index == (4,) and ann.current_slice() == (4,)
    assert ann.labels_layer.selected_label == lid
    assert "doubtful 2/2: z=4" in ann.last_message
    ann.close()


def test_the_scribble_layer_is_a_helper_found_again(viewer_model):
    truth, images = nuclei_stack()
    image = viewer_model.add_image(images, name="nuclei")
    ann = Annotator(viewer_model, image, predictor=OraclePredictor(truth, images))
    layer = ann.add_scribble_layer()
    assert layer in ann.layers.helpers and ann.add_scribble_layer() is layer
    ann.close()
    again = Annotator(viewer_model, image, predictor=OraclePredictor(truth, images))
    assert again.scribble_layer is layer                   # adopted by its tag
    layer.data[3, 18:23, 53:60] = 1
    np.testing.assert_array_equal(again.segment((3,))[0], truth[3] == 2)
    again.close(remove_layers=True)
    assert layer not in viewer_model.layers
