"""Qt-free annotation helpers: geometry, world->data, prompt collection, preview,
the embedding scheduler and the undoable labels writes (``napari_sam.labels.LayerWriter``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotation.preview import Preview, masks_to_label_image
from napari_sam.annotation.prompts import (
    ObjectPrompt,
    collect_slice_prompts,
    decode_objects,
    prompts_on_slice,
    rasterize_shape,
)
from napari_sam.annotation.scheduler import EmbeddingScheduler, EmbedRequest
from napari_sam.annotation.slicing import (
    ImageGeometry,
    apply_affine,
    layer_affine,
    neighbour_indices,
    world_slice_index,
)
from napari_sam.labels import LayerWriter, resolve_label_ids
from napari_sam.predictor import Prediction


class FakeLayer:
    """A layer transform like napari's: world = data * scale + translate."""

    def __init__(self, scale, translate):
        self.scale = np.asarray(scale, float)
        self.translate = np.asarray(translate, float)
        self.ndim = len(scale)

    def world_to_data(self, position):
        return (np.asarray(position, float) - self.translate) / self.scale

    def data_to_world(self, position):
        return np.asarray(position, float) * self.scale + self.translate


def image_affine(scale, translate):
    """Affine taking world coordinates to the image's data coordinates."""
    return layer_affine(FakeLayer(scale, translate), "world_to_data")


# ------------------------------------------------------------------ slicing
def test_layer_affine_matches_the_layer_and_inverts():
    layer = FakeLayer((2.0, 0.5, 0.25), (10.0, -3.0, 5.0))
    w2d = layer_affine(layer, "world_to_data")
    d2w = layer_affine(layer, "data_to_world")
    pts = np.array([[24.0, 7.0, 12.5], [10.0, -3.0, 5.0]])
    np.testing.assert_allclose(apply_affine(w2d, pts), [layer.world_to_data(p) for p in pts])
    np.testing.assert_allclose(w2d @ d2w, np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match="direction"):
        layer_affine(layer, "sideways")


def test_layer_affine_of_a_real_napari_layer_with_rotation():
    from napari.layers import Image

    layer = Image(np.zeros((4, 8, 8)), scale=(2, 1, 1), translate=(1, 2, 3), rotate=30)
    w2d = layer_affine(layer, "world_to_data")
    for p in ([3.0, 4.0, 5.0], [9.0, -1.0, 2.5]):
        np.testing.assert_allclose(apply_affine(w2d, p), layer.world_to_data(p), atol=1e-9)


@pytest.mark.parametrize(
    ("shape", "rgb", "n_lead", "slice_shape"),
    [((32, 40), False, 0, (32, 40)), ((5, 32, 40), False, 1, (32, 40)),
     ((3, 5, 32, 40), False, 2, (32, 40))],
    ids=["2d", "3d", "4d"],
)
def test_geometry(shape, rgb, n_lead, slice_shape):
    geo = ImageGeometry(shape, rgb=rgb)
    assert geo.n_lead == n_lead and geo.slice_shape == slice_shape
    assert geo.scale == (1.0,) * len(shape) and geo.translate == (0.0,) * len(shape)
    assert geo.check_slice_index((0,) * n_lead) == (0,) * n_lead


def test_geometry_from_an_rgb_layer_excludes_the_channel_axis():
    from napari.layers import Image

    layer = Image(np.zeros((6, 20, 24, 3), np.uint8), rgb=True, scale=(3, 1, 1))
    geo = ImageGeometry.from_layer(layer)
    assert geo.shape == (6, 20, 24) and geo.rgb and geo.channels == 3
    assert geo.scale == (3.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("index", "message"),
    [((1, 2), "has 2 entries"), ((9,), "outside"), ((1.0,), "must be ints"), (None, "None")],
    ids=["too-many", "out-of-range", "float", "none"],
)
def test_check_slice_index_errors(index, message):
    with pytest.raises(ValueError, match=message):
        ImageGeometry((5, 16, 16)).check_slice_index(index)


def test_world_slice_index_with_scale_translate_and_extra_viewer_axes():
    geo = ImageGeometry((12, 48, 64), scale=(2, 0.5, 0.5), translate=(10, -3, 5))
    w2d = image_affine(geo.scale, geo.translate)
    assert world_slice_index(geo, w2d, (24.0, 0, 0)) == (7,)
    assert world_slice_index(geo, w2d, (24.9, 0, 0)) == (7,)
    assert world_slice_index(geo, w2d, (25.0, 0, 0)) == (8,)  # halves round up
    assert world_slice_index(geo, w2d, (99, 24.0, 0, 0)) == (7,)  # viewer has a 4th axis
    assert world_slice_index(geo, w2d, (5.0, 0, 0)) is None  # before the first slice
    assert world_slice_index(geo, w2d, (40.0, 0, 0)) is None


def test_neighbours_change_only_z():
    geo = ImageGeometry((3, 5, 16, 16))
    assert neighbour_indices(geo, (1, 0)) == [(1, 1)]
    assert neighbour_indices(geo, (2, 2), radius=2) == [(2, 3), (2, 1), (2, 4), (2, 0)]
    assert neighbour_indices(ImageGeometry((16, 16)), ()) == []


# ------------------------------------------------------------------ prompts
def test_points_map_world_to_pixels_and_pick_their_slice():
    scale, translate = (2.0, 0.5, 0.25), (10.0, -3.0, 5.0)
    to_image = image_affine(scale, translate)  # points layer holds world coordinates
    world = [
        [10 + 7 * 2, -3 + 20 * 0.5, 5 + 30 * 0.25],  # slice 7, (20, 30)
        [10 + 7 * 2 + 0.9, -3 + 4 * 0.5, 5 + 9 * 0.25],  # 7.45 -> slice 7, (4, 9)
        [10 + 8 * 2, -3 + 20 * 0.5, 5 + 30 * 0.25],  # slice 8
    ]
    result = collect_slice_prompts((7,), (48, 64), n_lead=1, points=world,
                                   positive=[True, False, True], points_to_image=to_image)
    (obj,) = result.objects
    np.testing.assert_allclose(obj.points, [[20, 30], [4, 9]])
    assert obj.labels.tolist() == [1, 0]
    assert result.point_rows == (0, 1) and result.n_points == 2
    on = prompts_on_slice(np.asarray(world), to_image, 1, (8,))
    assert on.tolist() == [False, False, True]


@pytest.mark.parametrize(
    ("n_lead", "index"), [(0, ()), (1, (3,)), (2, (1, 3))], ids=["2d", "3d", "4d"]
)
def test_points_for_2d_3d_4d(n_lead, index):
    other = tuple(i + 1 for i in index)
    pts = [[*index, 5, 6], [*other, 7, 8]]
    result = collect_slice_prompts(index, (16, 16), n_lead=n_lead, points=pts)
    expected = [[5, 6], [7, 8]] if n_lead == 0 else [[5, 6]]
    np.testing.assert_allclose(result.objects[0].points, expected)


def test_4d_point_on_another_time_point_is_ignored():
    result = collect_slice_prompts((1, 3), (16, 16), n_lead=2, points=[[0, 3, 5, 5]])
    assert result.objects == () and result.n_points == 0


def test_points_outside_the_slice_are_reported_and_dropped():
    result = collect_slice_prompts((), (16, 20), n_lead=0,
                                   points=[[5, 5], [-3, 2], [4, 19.4], [4, 19.6]])
    np.testing.assert_allclose(result.objects[0].points, [[5, 5], [4, 19]])  # clipped
    assert "2 point(s) outside the 16x20 slice" in result.messages[0]


def test_only_negative_points_give_no_object_and_a_message():
    result = collect_slice_prompts((), (16, 16), n_lead=0, points=[[5, 5]], positive=[False])
    assert result.objects == ()
    assert "only negative points" in result.messages[0]


def test_rectangles_are_boxes_and_points_inside_join_them():
    shapes = [np.array([[2, 2, 3], [2, 2, 10], [2, 9, 10], [2, 9, 3]], float),  # slice 2
              np.array([[2, 12, 12], [2, 12, 15], [2, 15, 15], [2, 15, 12]], float),
              np.array([[3, 1, 1], [3, 1, 5], [3, 5, 5], [3, 5, 1]], float)]  # slice 3
    points = [[2, 5, 5], [2, 13, 13], [2, 0, 15], [2, 1, 14]]
    result = collect_slice_prompts(
        (2,), (16, 16), n_lead=1, points=points, positive=[False, True, True, False],
        shapes=shapes, shape_types=["rectangle"] * 3,
    )
    box_a, box_b, free = result.objects
    np.testing.assert_allclose(box_a.box, [2, 3, 9, 10])
    assert box_a.labels.tolist() == [0] and box_b.labels.tolist() == [1]
    np.testing.assert_allclose(free.points, [[0, 15], [1, 14]])
    assert result.shape_rows == (0, 1)
    batch = collect_slice_prompts((2,), (16, 16), n_lead=1, points=points[2:],
                                  positive=[True, True], batch=True)
    assert len(batch.objects) == 2


def test_batch_positive_points_each_get_all_free_negatives():
    result = collect_slice_prompts((), (32, 32), n_lead=0, batch=True,
                                   points=[[5, 5], [20, 20], [10, 10]],
                                   positive=[True, True, False])
    assert [o.labels.tolist() for o in result.objects] == [[1, 0], [1, 0]]
    np.testing.assert_allclose(result.objects[1].points, [[20, 20], [10, 10]])


def test_polygon_and_ellipse_become_mask_prompts():
    poly = np.array([[0, 2, 2], [0, 2, 12], [0, 12, 2]], float)
    ellipse = np.array([[0, 16, 16], [0, 16, 28], [0, 24, 28], [0, 24, 16]], float)
    line = np.array([[0, 1, 1], [0, 5, 5]], float)
    result = collect_slice_prompts((0,), (32, 32), n_lead=1, shapes=[poly, ellipse, line],
                                   shape_types=["polygon", "ellipse", "line"])
    p, e = result.objects
    assert p.mask[3, 3] and not p.mask[11, 11] and p.source == "polygon"
    assert e.mask[20, 22] and not e.mask[16, 16] and e.mask.sum() == pytest.approx(
        np.pi * 4 * 6, rel=0.15)
    np.testing.assert_allclose(e.box, [16, 16, 24, 28], atol=1)
    assert any("line 2 ignored" in m for m in result.messages)


def test_shapes_with_scale_use_the_shapes_layer_transform():
    scale, translate = (1.0, 2.0, 2.0), (0.0, 10.0, 10.0)
    to_image = image_affine(scale, translate)
    rect_world = np.array([[1, 14, 14], [1, 14, 30], [1, 30, 30], [1, 30, 14]], float)
    result = collect_slice_prompts((1,), (32, 32), n_lead=1, shapes=[rect_world],
                                   shape_types=["rectangle"], shapes_to_image=to_image)
    np.testing.assert_allclose(result.objects[0].box, [2, 2, 10, 10])


def test_rasterize_rejects_other_types():
    with pytest.raises(ValueError, match="only polygons and ellipses"):
        rasterize_shape(np.zeros((4, 2)), "rectangle", (8, 8))


def test_bad_arrays_are_named():
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        collect_slice_prompts((0,), (8, 8), n_lead=1, points=[[1, 2]])
    with pytest.raises(ValueError, match="positive must have shape"):
        collect_slice_prompts((0,), (8, 8), n_lead=1, points=[[0, 1, 2]], positive=[1, 0])


# ------------------------------------------------------------------ decoding
class RecordingPredictor:
    def __init__(self, batch):
        self.calls = []
        if batch:
            self.predict_batch = self._predict_batch

    def predict(self, emb, points=None, labels=None, box=None, mask=None, multimask=True):
        self.calls.append(("predict", None if points is None else len(points), box is not None))
        return Prediction(np.zeros((1, 4, 4), bool), np.ones(1), np.zeros((1, 4, 4)))

    def _predict_batch(self, emb, points=None, labels=None, boxes=None, masks=None,
                       multimask=True):
        n = len(points if points is not None else boxes if boxes is not None else masks)
        self.calls.append(("batch", n, boxes is not None))
        return [Prediction(np.full((1, 4, 4), i % 2 == 0), np.ones(1), np.zeros((1, 4, 4)))
                for i in range(n)]


@pytest.mark.parametrize("batch", [True, False], ids=["predict_batch", "predict-only"])
def test_decode_groups_objects_of_the_same_kind(batch):
    one = np.array([[1.0, 1.0]])
    objs = [ObjectPrompt(one, np.array([1])), ObjectPrompt(one, np.array([1])),
            ObjectPrompt(np.zeros((0, 2)), np.zeros(0, int), box=np.array([0, 0, 3, 3.0])),
            ObjectPrompt(np.vstack([one, one]), np.array([1, 0]))]
    predictor = RecordingPredictor(batch)
    preds = decode_objects(predictor, None, objs, multimask=False)
    assert len(preds) == 4
    if batch:
        assert ("batch", 2, False) in predictor.calls and len(predictor.calls) == 3
        assert preds[0].masks.all() and not preds[1].masks.any()  # order kept
    else:
        assert [c[0] for c in predictor.calls] == ["predict"] * 4


# ------------------------------------------------------------------ preview
def _pred(sizes, scores):
    masks = np.zeros((len(sizes), 10, 10), bool)
    for k, s in enumerate(sizes):
        masks[k, :s, :s] = True
    return Prediction(masks, np.asarray(scores, float), np.zeros((len(sizes), 4, 4)))


def test_preview_starts_at_the_best_and_cycles_by_score():
    preview = Preview((3,), (_pred([3, 6, 4], [0.5, 0.9, 0.7]),))
    assert preview.choices == (1,) and preview.n_candidates == 3
    seen = []
    for _ in range(4):
        seen.append(preview.choices[0])
        preview = preview.next_candidate()
    assert seen == [1, 2, 0, 1]
    assert preview.scores == [0.7]


def test_empty_candidates_are_skipped_and_named():
    from napari_sam.annotation.preview import MIN_OBJECT_PIXELS

    # the best-scoring candidate is empty: the best non-empty one is shown
    preview = Preview((3,), (_pred([0, 5, 2], [0.9, 0.6, 0.7]),),
                      prompts=(ObjectPrompt(np.array([[1.0, 2.0]]), np.array([1])),))
    assert preview.choices == (1,) and preview.empty == (False,)
    assert preview.n_shown_candidates == 1 and preview.next_candidate().choices == (1,)
    assert preview.empty_message("z=3") is None
    # every candidate empty: "no object found" with the place, nothing to commit
    nothing = Preview((3,), (_pred([0, 2, 1], [0.9, 0.6, 0.7]),),
                      prompts=(ObjectPrompt(np.array([[1.0, 2.0]]), np.array([1])),))
    assert nothing.empty == (True,) and nothing.areas[0] < MIN_OBJECT_PIXELS
    text = nothing.empty_message("z=3")
    assert text.startswith("no object found on z=3 at (row 1, col 2): try a box")


def test_positive_points_in_separate_parts_are_counted():
    from napari_sam.annotation.preview import split_points

    mask = np.zeros((20, 20), bool)
    mask[1:5, 1:5] = True
    mask[10:15, 10:15] = True
    three = ObjectPrompt(np.array([[2.0, 2.0], [12.0, 12.0], [3.0, 3.0]]), np.array([1, 1, 1]))
    assert split_points(mask, three) == (3, 2)
    one_part = ObjectPrompt(np.array([[2.0, 2.0], [3.0, 3.0], [8.0, 8.0]]), np.array([1, 1, 0]))
    assert split_points(mask, one_part) == (2, 1)
    outside = ObjectPrompt(np.array([[2.0, 2.0], [18.0, 2.0]]), np.array([1, 1]))
    assert split_points(mask, outside) == (2, 2)  # the second object was missed


def test_preview_keeps_the_prompted_parts_of_each_mask():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 1:4, 1:4] = True  # the clicked object
    masks[0, 7:9, 6:9] = True  # a stray fragment on a neighbour
    pred = Prediction(masks, np.array([0.9]), np.zeros((1, 4, 4)))
    click = ObjectPrompt(np.array([[2.0, 2.0]]), np.array([1]))
    preview = Preview((0,), (pred,), prompts=(click,))
    (shown,) = preview.masks
    assert shown[1:4, 1:4].all() and not shown[7:9, 6:9].any()
    assert preview.masks[0] is shown  # computed once
    boxed = Preview((0,), (pred,), prompts=(ObjectPrompt(
        np.zeros((0, 2)), np.zeros(0, int), box=np.array([6.0, 5.0, 9.0, 9.0])),))
    assert boxed.masks[0][7:9, 6:9].all() and not boxed.masks[0][1:4, 1:4].any()
    np.testing.assert_array_equal(Preview((0,), (pred,)).masks[0], masks[0])  # no prompts
    with pytest.raises(ValueError, match="prompts"):
        Preview((0,), (pred,), prompts=(click, click))


def test_label_image_puts_small_objects_on_top():
    big, small = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    big[:, :] = True
    small[2:4, 2:4] = True
    image = masks_to_label_image([small, big], (6, 6))
    assert image[3, 3] == 1 and image[0, 0] == 2 and image.dtype == np.uint8
    assert masks_to_label_image([small] * 300, (6, 6)).dtype == np.uint16


# ------------------------------------------------------------------ scheduler
class SyncLauncher:
    """Runs the 'embedding' at once: puts the key in the store, then finishes."""

    def __init__(self, store, fail=()):
        self.store = store
        self.fail = set(fail)
        self.launched = []

    def __call__(self, req, finished):
        self.launched.append(req.slice_index)
        if req.slice_index not in self.fail:
            self.store.add(req.key)
        finished()
        return self

    def quit(self):
        pass


def _req(z, prefetch=False):
    return EmbedRequest(("img", (z,)), (z,), (0.0, 1.0), prefetch)


def test_scheduler_runs_requests_and_calls_waiters():
    store: set = set()
    launcher = SyncLauncher(store)
    prefetched = []

    def idle():
        for z in (4, 6):
            if not prefetched.count(z):
                prefetched.append(z)
                scheduler.request(_req(z, prefetch=True))

    scheduler = EmbeddingScheduler(launcher, store.__contains__, on_idle=idle)
    ready = []
    scheduler.request(_req(5), on_ready=lambda: ready.append(5))
    assert ready == [5]
    assert launcher.launched == [(5,), (4,), (6,)]
    scheduler.request(_req(5), on_ready=lambda: ready.append("again"))  # cached: at once
    assert ready == [5, "again"] and launcher.launched == [(5,), (4,), (6,)]
    assert not scheduler.busy


def test_scheduler_failure_stops_prefetch_until_an_explicit_request():
    store: set = set()
    launcher = SyncLauncher(store, fail={(1,)})
    scheduler = EmbeddingScheduler(launcher, store.__contains__)
    ready = []
    scheduler.request(_req(1), on_ready=lambda: ready.append(1))
    assert ready == [] and scheduler.failed
    scheduler.request(_req(2, prefetch=True))
    assert launcher.launched == [(1,)]  # no prefetch after a failure
    scheduler.request(_req(2))
    assert launcher.launched == [(1,), (2,)] and not scheduler.failed


def test_scheduler_orders_explicit_before_prefetch_and_cancels():
    store: set = set()
    pending = []

    def launcher(req, finished):
        pending.append((req, finished))
        return type("H", (), {"quit": lambda self: None})()

    scheduler = EmbeddingScheduler(launcher, store.__contains__)
    scheduler.request(_req(0))
    scheduler.request(_req(1, prefetch=True))
    scheduler.request(_req(2))
    assert [q.slice_index for q in scheduler.queued()] == [(2,), (1,)]
    scheduler.drop_prefetches()
    assert [q.slice_index for q in scheduler.queued()] == [(2,)]
    got = []
    scheduler.request(_req(0), on_ready=lambda: got.append(0))  # already running: waits
    assert scheduler.cancel() is True
    store.add(("img", (0,)))
    pending[0][1]()  # the running work finishes after the cancel
    assert got == [] and scheduler.queued() == [] and not scheduler.busy


# ------------------------------------------------------------------ writing
def test_writer_group_makes_many_writes_one_undo_step():
    from napari.layers import Labels

    layer = Labels(np.zeros((4, 8, 8), np.uint16))
    layer.data[0, 0, 0] = 5
    writer = LayerWriter(layer)
    with writer.group():
        for z in (1, 2, 3):
            writer.write_slices({(z,): {7: np.eye(8, dtype=bool)}})
    assert (layer.data == 7).sum() == 24
    layer.undo()
    assert (layer.data == 7).sum() == 0 and layer.data[0, 0, 0] == 5


def test_write_masks_upcasts_preserves_and_is_one_step():
    from napari.layers import Labels

    data = np.zeros((8, 8), np.uint8)
    data[0, :] = 255
    layer = Labels(data)
    a = np.zeros((8, 8), bool)
    a[0:3, 0:3] = True
    b = np.zeros((8, 8), bool)
    b[5:7, 5:7] = True
    ids = resolve_label_ids(None, 2, layer.data)
    assert ids == [256, 257]
    result = LayerWriter(layer).write_objects([a, b], (), ids)
    assert result.upcast == (np.dtype(np.uint8), np.dtype(np.uint16))
    assert result.written == [256, 257] and result.n_pixels == [6, 4]
    assert (layer.data[0] == 255).all()
    layer.undo()
    assert set(np.unique(layer.data)) == {0, 255}


@pytest.mark.parametrize(
    ("label_id", "n", "message"),
    [(3, 2, "one id per object"), ([0], 1, ">= 1"), ([2, 2], 2, "distinct"),
     ("x", 1, "int or a sequence")],
    ids=["count", "zero", "duplicate", "type"],
)
def test_resolve_label_ids_errors(label_id, n, message):
    with pytest.raises(ValueError, match=message):
        resolve_label_ids(label_id, n, np.zeros((4, 4), np.uint8))
