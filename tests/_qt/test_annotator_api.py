"""The scripted Annotator API (blocking calls, stand-in predictors).

The first test runs in a real Qt viewer; the others use napari's Qt-free
``ViewerModel`` (the scripted API needs no event loop), which keeps them fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotator import Annotator

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, -3.0, 5.0)


def disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def noise_stack(shape, seed=0):
    return np.random.default_rng(seed).integers(100, 1000, shape).astype(np.uint16)


@pytest.fixture
def viewer(viewer_model):
    return viewer_model


def add_stack3d(viewer):
    """A 3D image with anisotropic scale and an offset, plus a user's Labels layer."""
    data = noise_stack((12, 48, 64))
    image = viewer.add_image(data, scale=SCALE, translate=TRANSLATE, name="stack")
    existing = np.zeros(data.shape, np.uint32)
    existing[7, 18:21, 26:29] = 5  # inside the disk that will be segmented
    existing[3, 20:30, 20:30] = 2
    labels = viewer.add_labels(existing.copy(), scale=SCALE, translate=TRANSLATE, name="mine")
    return image, labels, existing


def test_scripted_point_on_slice_7_commit_and_undo(make_napari_viewer_proxy, disk_predictor):
    viewer = make_napari_viewer_proxy()
    image, labels, existing = add_stack3d(viewer)
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    assert ann.labels_layer is labels
    viewer.dims.set_current_step(0, 7)
    assert ann.current_slice() == (7,)
    # a positive point at pixel (row 20, col 30) of slice 7, given in world coordinates
    world = np.add(TRANSLATE, np.multiply(SCALE, (7, 20, 30)))
    ann.points_layer.add(ann.points_layer.world_to_data(world))
    slice_8 = world + np.array([2.0, 0, 0])
    ann.points_layer.add(ann.points_layer.world_to_data(slice_8))  # another slice: ignored
    masks = ann.segment()
    assert len(masks) == 1
    expected = disk((48, 64), (20, 30), disk_predictor.radius)
    np.testing.assert_array_equal(masks[0], expected)
    assert np.array_equal(ann.preview_layer.data[7] > 0, expected)
    assert not ann.preview_layer.data[8].any()

    ids = ann.commit()
    assert ids == [6]  # max existing (5) + 1
    new = labels.data == 6
    assert new[7].sum() == new.sum()  # only on slice 7
    np.testing.assert_array_equal(new[7], expected & (existing[7] == 0))
    keep = existing > 0
    np.testing.assert_array_equal(labels.data[keep], existing[keep])  # existing labels intact
    assert not ann.preview_layer.data.any()
    assert len(ann.points_layer.data) == 1  # slice 7's prompt cleared, slice 8's kept

    labels.undo()
    np.testing.assert_array_equal(labels.data, existing)
    labels.redo()
    assert (labels.data == 6).sum() == new.sum()


def test_creates_uint32_labels_with_image_transform(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((5, 32, 40)), scale=SCALE, translate=TRANSLATE)
    ann = Annotator(viewer, image, predictor=disk_predictor)
    for layer in (ann.labels_layer, ann.preview_layer, ann.points_layer, ann.shapes_layer):
        np.testing.assert_allclose(layer.scale, SCALE)
        np.testing.assert_allclose(layer.translate, TRANSLATE)
    assert ann.labels_layer.data.dtype == np.uint32
    assert ann.labels_layer.data.shape == (5, 32, 40)
    assert viewer.dims.range[0].step == pytest.approx(2.0)  # prompt layers keep the z step


def _dask(a):
    import dask.array as da

    return da.from_array(a, chunks=(1,) * (a.ndim - 2) + a.shape[-2:])


def _zarr(a):
    import zarr

    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=a.shape, dtype=a.dtype,
                          chunks=(1,) * (a.ndim - 2) + a.shape[-2:])
    z[...] = a
    return z


@pytest.mark.parametrize(
    ("shape", "rgb", "wrap", "step", "index"),
    [
        ((40, 48), False, None, {}, ()),
        ((3, 6, 40, 48), False, None, {0: 2, 1: 4}, (2, 4)),
        ((6, 40, 48, 3), True, None, {0: 3}, (3,)),
        ((6, 40, 48, 4), True, None, {0: 1}, (1,)),
        ((6, 40, 48), False, _dask, {0: 5}, (5,)),
        ((6, 40, 48), False, _zarr, {0: 2}, (2,)),
    ],
    ids=["2d", "4d-tzyx", "rgb", "rgba", "dask", "zarr"],
)
def test_segment_commit_on_any_geometry(viewer, disk_predictor, shape, rgb, wrap, step, index):
    data = noise_stack(shape).astype(np.uint8 if rgb else np.uint16)
    nd = len(shape) - (1 if rgb else 0)
    scale = (1.5,) * (nd - 2) + (0.25, 0.5)
    translate = (4.0,) * (nd - 2) + (-2.0, 7.0)
    image = viewer.add_image(data if wrap is None else wrap(data), rgb=rgb, scale=scale,
                             translate=translate)
    ann = Annotator(viewer, image, predictor=disk_predictor)
    for axis, value in step.items():
        viewer.dims.set_current_step(axis, value)
    assert ann.current_slice() == index
    ann.add_point((*index, 25, 12), world=False)
    ann.segment()
    assert ann.commit() == [1]
    expected = np.zeros(shape[:nd], bool)
    expected[index] = disk(shape[nd - 2 : nd], (25, 12), disk_predictor.radius)
    np.testing.assert_array_equal(ann.labels_layer.data == 1, expected)
    assert disk_predictor.embed_calls, "the slice was embedded"
    if rgb:  # alpha dropped, channels kept
        assert ann.read_slice(index).shape == (40, 48, 3)


def test_only_the_needed_slice_is_read(viewer, disk_predictor):
    import dask.array as da

    reads = []

    def block(block_info=None):
        reads.append(block_info[None]["chunk-location"][0])
        return np.full((1, 32, 32), 500, np.uint16)

    lazy = da.map_blocks(block, chunks=((1,) * 8, (32,), (32,)), dtype=np.uint16)
    image = viewer.add_image(lazy, contrast_limits=(0, 1000))
    ann = Annotator(viewer, image, predictor=disk_predictor, normalization="display")
    reads.clear()
    ann.add_point((5, 10, 10))
    ann.segment(slice=(5,))
    assert set(reads) == {5}
    # robust: the range is measured once, from a bounded sample, then one slice per embedding
    robust = Annotator(viewer, image, predictor=disk_predictor)
    reads.clear()
    robust.embedding((2,))
    assert 2 in reads and len(reads) <= 8 + 1
    reads.clear()
    robust.embedding((3,))
    assert reads == [3]


def test_robust_range_ignores_the_display_limits_and_display_mode_follows_them(
        viewer, disk_predictor):
    from napari_sam.normalize import stack_contrast_limits

    data = noise_stack((4, 32, 32))
    image = viewer.add_image(data, contrast_limits=(100, 900))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    assert ann.normalization == "robust"
    robust = stack_contrast_limits(data)
    emb = ann.embedding((1,))
    assert emb.contrast_limits == robust == ann.contrast_limits
    image.contrast_limits = (0, 500)  # the user adjusts the display
    assert ann.embedding((1,)) is emb and len(disk_predictor.embed_calls) == 1
    ann.normalization = "display"
    assert ann.embedding((1,)).contrast_limits == (0.0, 500.0)
    assert len(disk_predictor.embed_calls) == 2
    ann.embedding((1,))
    assert len(disk_predictor.embed_calls) == 2  # cached
    image.contrast_limits = (100, 900)
    assert ann.embedding((1,)).contrast_limits == (100.0, 900.0)
    assert len(disk_predictor.embed_calls) == 3
    with pytest.raises(ValueError, match="normalization must be one of"):
        Annotator(viewer, image, predictor=disk_predictor, normalization="auto")


def test_boxes_give_several_objects_committed_as_one_undo_step(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((5, 40, 50)))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    ann.add_box((2,), (5, 5, 12, 15))
    ann.add_box((2,), (20, 30, 30, 45))
    ann.add_box((3,), (1, 1, 30, 30))  # other slice: ignored
    masks = ann.segment(slice=(2,))
    assert len(masks) == 2
    assert masks[0][5:13, 5:16].all() and masks[0].sum() == 8 * 11
    ids = ann.commit()
    assert ids == [1, 2]
    assert (ann.labels_layer.data == 2).sum() == 11 * 16
    ann.labels_layer.undo()
    assert not ann.labels_layer.data.any()


def test_batch_points_and_batch_decoding(viewer, tiny_predictor):
    image = viewer.add_image(noise_stack((3, 64, 64)))
    ann = Annotator(viewer, image, predictor=tiny_predictor)
    for rc in ((10, 10), (40, 50), (50, 12)):
        ann.add_point((1, *rc))
    ann.add_point((1, 30, 30), positive=False)
    assert len(ann.prompts((1,), batch=True).objects) == 3
    assert len(ann.prompts((1,)).objects) == 1
    masks = ann.segment(slice=(1,), batch=True)
    assert len(masks) == 3
    assert all(m.shape == (64, 64) and m.dtype == bool for m in masks)


def test_polygon_and_ellipse_are_mask_prompts(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((2, 40, 40)))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    ann.shapes_layer.add(np.array([[1, 5, 5], [1, 5, 20], [1, 20, 5]]), shape_type="polygon")
    ann.add_box((1,), (22, 22, 32, 36), shape_type="ellipse")
    objs = ann.prompts((1,)).objects
    assert [o.source for o in objs] == ["polygon", "ellipse"]
    assert all(o.mask is not None and o.box is not None for o in objs)
    assert objs[1].mask[27, 29] and not objs[1].mask[22, 22]


def test_next_mask_cycles_candidates(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((40, 40)))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    ann.add_point((20, 20))
    ann.segment()
    sizes = [int(ann.preview.masks[0].sum())]
    for _ in range(3):
        sizes.append(int(ann.next_mask().sum()))
    r = disk_predictor.radius
    expected = [int(disk((40, 40), (20, 20), r + 2 * k).sum()) for k in (0, 1, 2, 0)]
    assert sizes == expected
    assert "mask 1/3" in ann.last_message
    ann.commit()
    assert (ann.labels_layer.data == 1).sum() == expected[0]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda a: None, "no prompts"),
        (lambda a: a.add_point((2, 10, 10), positive=False), "only negative"),
        (lambda a: a.add_point((2, 10, 500)), "outside"),
        (lambda a: a.add_point((3, 10, 10)), "no prompts"),
    ],
    ids=["no-prompts", "only-negative", "outside", "other-slice"],
)
def test_bad_prompts_notify_and_change_nothing(viewer, disk_predictor, setup, message):
    image = viewer.add_image(noise_stack((5, 32, 32)))
    labels = viewer.add_labels(np.ones((5, 32, 32), np.uint32))
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    setup(ann)
    assert ann.segment(slice=(2,)) == []
    assert message in ann.last_message
    assert ann.commit() == []
    assert "nothing to commit" in ann.last_message
    assert (labels.data == 1).all() and not ann.preview_layer.data.any()


def test_commit_keeps_existing_labels_unless_overwrite(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((40, 40)))
    before = np.zeros((40, 40), np.uint16)
    before[18:23, :] = 3
    labels = viewer.add_labels(before.copy())
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    ann.add_point((20, 20))
    ann.segment()
    assert ann.commit(label_id=9, clear_prompts=False) == [9]
    np.testing.assert_array_equal(labels.data[before > 0], 3)
    outside = ~disk((40, 40), (20, 20), disk_predictor.radius)
    np.testing.assert_array_equal(labels.data[outside], before[outside])
    ann.segment()
    assert ann.commit(label_id=10, overwrite=True) == [10]
    assert (labels.data == 10).sum() == disk((40, 40), (20, 20), disk_predictor.radius).sum()
    np.testing.assert_array_equal(labels.data[outside], before[outside])
    with pytest.raises(ValueError, match="one id per object"):
        ann.add_point((5, 5))
        ann.segment()
        ann.commit(label_id=[1, 2])


def test_labels_dtype_too_small_is_upcast(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((32, 32)))
    data = np.zeros((32, 32), np.uint8)
    data[0, 0] = 255
    labels = viewer.add_labels(data)
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    ann.add_point((16, 16))
    ann.segment()
    assert ann.commit() == [256]
    assert labels.data.dtype == np.uint16
    assert labels.data[0, 0] == 255 and labels.data[16, 16] == 256
    assert "uint8 -> uint16" in " ".join([ann.last_message]) or labels.data.dtype == np.uint16
    labels.undo()
    assert labels.data[16, 16] == 0 and labels.data[0, 0] == 255


def test_invalid_layers_raise_clear_errors(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((4, 32, 32)))
    wrong = viewer.add_labels(np.zeros((4, 32, 31), np.uint32))
    with pytest.raises(ValueError, match="same shape"):
        Annotator(viewer, image, predictor=disk_predictor, labels_layer=wrong)
    with pytest.raises(ValueError, match="must be an Image layer"):
        Annotator(viewer, wrong, predictor=disk_predictor)
    with pytest.raises(ValueError, match="no layer named"):
        Annotator(viewer, "nope", predictor=disk_predictor)
    ann = Annotator(viewer, image.name, predictor=disk_predictor)
    with pytest.raises(ValueError, match="leading axis"):
        ann.segment(slice=(1, 2))
    assert np.array_equal(wrong.data, np.zeros((4, 32, 31), np.uint32))


def test_clear_removes_only_this_slice(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((4, 32, 32)))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    ann.add_point((1, 10, 10))
    ann.add_point((2, 10, 10))
    ann.add_box((1,), (2, 2, 8, 8))
    ann.segment(slice=(1,))
    ann.clear(slice=(1,))
    assert len(ann.points_layer.data) == 1 and len(ann.shapes_layer.data) == 0
    assert ann.preview is None and not ann.preview_layer.data.any()


def test_toggle_positive_and_colours(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((32, 32)))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    assert ann.positive
    ann.points_layer.add([5, 5])
    assert ann.toggle_positive() is False
    ann.points_layer.add([6, 6])
    assert list(ann.points_layer.features["positive"]) == [True, False]
    colours = ann.points_layer.face_color
    assert not np.allclose(colours[0], colours[1])


def test_save_and_load_prompts(viewer, disk_predictor, tmp_path):
    image = viewer.add_image(noise_stack((4, 32, 32)), scale=SCALE, translate=TRANSLATE)
    ann = Annotator(viewer, image, predictor=disk_predictor)
    ann.add_point((1, 10, 12))
    ann.add_point((1, 20, 22), positive=False)
    ann.add_box((2,), (3, 4, 10, 12))
    saved = ann.save_prompts(tmp_path / "p.json")
    np.testing.assert_allclose(saved.points, [[1, 10, 12], [1, 20, 22]])
    ann.clear(slice=(1,))
    ann.clear(slice=(2,))
    ann.load_prompts(tmp_path / "p.json")
    np.testing.assert_allclose(ann.points_layer.data, [[1, 10, 12], [1, 20, 22]])
    assert list(ann.points_layer.features["positive"]) == [True, False]
    assert ann.shapes_layer.shape_type == ["rectangle"]
    assert ann.prompts((2,)).objects[0].box.tolist() == [3, 4, 10, 12]


def test_real_tiny_model_end_to_end(viewer, tiny_predictor, blob_stack):
    image = viewer.add_image(blob_stack)
    ann = Annotator(viewer, image, predictor=tiny_predictor)
    ann.add_point((6, 30, 40))
    masks = ann.segment(slice=(6,))
    assert masks[0].shape == (64, 80)
    assert ann.preview.n_candidates == 3
    ann.next_mask()
    ann.commit()  # random weights: the mask may be empty or not; the call must work
    assert set(np.unique(ann.labels_layer.data)) <= {0, 1}


# ------------------------------------------------------------------ propagation
@pytest.mark.parametrize("four_d", [False, True], ids=["zyx", "tzyx"])
def test_propagate_is_one_undo_step_and_keeps_other_labels(
    viewer, disk_predictor, fake_propagate, four_d
):
    shape = (2, 6, 32, 32) if four_d else (6, 32, 32)
    image = viewer.add_image(noise_stack(shape), contrast_limits=(0, 2000))
    before = np.zeros(shape, np.uint32)
    lead = (1,) if four_d else ()
    before[(*lead, 4)][0:32, 14:16] = 7  # another object on slice 4
    labels = viewer.add_labels(before.copy())
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    if four_d:
        viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(len(lead), 2)
    ann.add_point((*lead, 2, 16, 10))
    ann.segment()
    (oid,) = ann.commit()
    after_commit = labels.data.copy()
    written = ann.propagate(direction="both", z_range=(1, 5))
    assert written == {oid: [3, 4, 1]}
    assert fake_propagate[-1]["cl"] == ann.contrast_limits != (0.0, 2000.0)  # robust
    assert fake_propagate[-1]["shape"] == (6, 32, 32)
    seed = after_commit[(*lead, 2)] == oid
    for z in (1, 3, 4):
        got = labels.data[(*lead, z)] == oid
        expected = np.roll(seed, z - 2, axis=1) & (before[(*lead, z)] == 0)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(labels.data[before > 0], 7)  # other object intact
    assert not labels.data[(*lead, 0)].any() and not labels.data[(*lead, 5)].any()
    if four_d:
        assert not labels.data[0].any()  # other time point untouched
    # slices embedded through the annotator's cache, once each
    assert len(disk_predictor.embed_calls) == 4
    labels.undo()  # the whole propagation
    np.testing.assert_array_equal(labels.data, after_commit)
    labels.undo()  # the commit
    np.testing.assert_array_equal(labels.data, before)


def test_propagate_needs_a_stack_and_a_committed_object(viewer, disk_predictor, fake_propagate):
    flat = viewer.add_image(noise_stack((32, 32)), name="flat")
    assert Annotator(viewer, flat, predictor=disk_predictor).propagate() is None
    stack = viewer.add_image(noise_stack((4, 32, 32)), name="stack")
    ann = Annotator(viewer, stack, predictor=disk_predictor)
    assert ann.propagate() is None
    assert "nothing to propagate" in ann.last_message
    assert ann.propagate(label_id=3) is None and "not on this slice" in ann.last_message
    assert not fake_propagate


def test_propagate_with_the_real_engine_and_an_oracle(viewer):
    """napari_sam.propagation + a ground-truth stand-in: the object is followed through z."""
    from stand_ins import OraclePredictor, ellipsoid_labels

    truth = ellipsoid_labels((10, 48, 48), [((5, 24, 24), (4, 12, 12))]).astype(np.uint32)
    image_data = (100 + 800 * (truth > 0)).astype(np.uint16)
    image_data[:, 0, :] = np.arange(10)[:, None]  # every slice distinct for the oracle
    image = viewer.add_image(image_data, scale=(3.0, 1.0, 1.0))
    oracle = OraclePredictor(truth, image_data)
    ann = Annotator(viewer, image, predictor=oracle)
    viewer.dims.set_current_step(0, 5)
    ann.add_point((5, 24, 24))
    ann.segment()
    (oid,) = ann.commit()
    written = ann.propagate()
    assert sorted(written[oid]) == [2, 3, 4, 5, 6, 7, 8]  # the tiny caps at z 1, 9 stop it
    got = ann.labels_layer.data == oid
    for z in range(10):
        expected = truth[z] > 0 if z in written[oid] else np.zeros_like(got[z])
        np.testing.assert_array_equal(got[z], expected)
    assert sorted(oracle.embedded) == list(range(1, 10))  # each slice once (cache shared)
    ann.labels_layer.undo()
    assert (ann.labels_layer.data == oid).sum() == (truth[5] > 0).sum()


def test_everything_into_a_review_layer_then_commit(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((3, 40, 40)))
    labels = viewer.add_labels(np.zeros((3, 40, 40), np.uint32))
    labels.data[1, 0:4, 0:4] = 9
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    result = ann.segment_everything(slice=(1,), points_per_side=4, pred_iou_thresh=0.5,
                                    stability_score_thresh=0.0)
    assert result.shape == (40, 40) and result.max() >= 1
    everything = ann.everything_layer
    assert everything is not None and everything is not labels
    np.testing.assert_array_equal(everything.data[1], result)
    assert not labels.data[0].any() and labels.data[1, 0, 0] == 9  # untouched so far
    ids = ann.commit_everything()
    assert ids and min(ids) == 10
    assert labels.data[1, 0, 0] == 9  # existing label kept
    assert set(np.unique(labels.data[1])) - {0, 9} == set(ids)
    assert not everything.data.any()
    labels.undo()
    assert set(np.unique(labels.data)) == {0, 9}
    assert ann.commit_everything() == []


def test_everything_on_the_whole_stack_commits_3d_objects(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((4, 40, 40)))
    labels = viewer.add_labels(np.zeros((4, 40, 40), np.uint32))
    labels.data[2, 0:3, 0:3] = 9
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    result = ann.segment_everything(slice=(1,), stack=True, points_per_side=4,
                                    pred_iou_thresh=0.5, stability_score_thresh=0.0,
                                    min_z_extent=1)
    assert result.shape == (4, 40, 40) and result.max() >= 1
    np.testing.assert_array_equal(ann.everything_layer.data, result)
    n_objects = len(np.unique(result)) - 1
    ids = ann.commit_everything()
    assert len(ids) == n_objects and min(ids) == 10
    assert labels.data[2, 0, 0] == 9  # existing label kept
    for obj, new in zip(sorted(set(np.unique(result)) - {0}), sorted(ids)):
        # each 3D object keeps one id through z (where it does not cover the old label)
        free = (result == obj) & ~((np.arange(4)[:, None, None] == 2) & (labels.data == 9))
        assert (labels.data[free] == new).all()
    assert not ann.everything_layer.data.any()
    labels.undo()  # the whole stack commit is one step
    assert set(np.unique(labels.data)) == {0, 9}
    assert ann.commit_everything() == []


def test_whole_stack_commit_returns_only_ids_it_wrote(viewer, disk_predictor):
    """issue 16: objects that existing labels cover entirely got (and emitted) unused ids."""
    image = viewer.add_image(noise_stack((4, 40, 40)))
    labels = viewer.add_labels(np.zeros((4, 40, 40), np.uint32))
    ann = Annotator(viewer, image, predictor=disk_predictor, labels_layer=labels)
    result = ann.segment_everything(slice=(1,), stack=True, points_per_side=4,
                                    pred_iou_thresh=0.5, stability_score_thresh=0.0,
                                    min_z_extent=1)
    objects = sorted(set(np.unique(result)) - {0})
    assert len(objects) >= 2
    hidden = objects[0]
    labels.data[result == hidden] = 9  # an existing label covers this object entirely
    emitted = []
    ann.events.committed.connect(lambda e: emitted.append(list(e.label_ids)))
    ids = ann.commit_everything()
    assert len(ids) == len(objects) - 1 and emitted == [ids]
    present = set(np.unique(labels.data).tolist())
    assert set(ids) <= present and present - set(ids) == {0, 9}
    assert ids == list(range(10, 10 + len(ids)))  # no id skipped for the hidden object
    assert (labels.data[result == hidden] == 9).all()
    # everything under existing labels: nothing committed, a warning, no ids
    labels.undo()
    labels.data[result > 0] = 9
    ann.segment_everything(slice=(1,), stack=True, points_per_side=4, pred_iou_thresh=0.5,
                           stability_score_thresh=0.0, min_z_extent=1)
    assert ann.commit_everything() == [] and not ann.everything_layer.data.any()


def test_everything_while_another_everything_job_runs_says_what_it_waits_for(
        viewer, disk_predictor):
    """Everything pressed while "find all like this" runs: a message, not silence."""
    from napari_sam.annotation.jobs import Job

    image = viewer.add_image(noise_stack((3, 40, 40)))
    ann = Annotator(viewer, image, predictor=disk_predictor)
    busy = Job("everything", "finding objects like [3]", lambda cancel: iter(()))
    ann.runner._active[99] = busy  # as if it were running in a worker
    assert ann.runner.titles("everything") == ["finding objects like [3]"]
    assert ann.segment_everything(slice=(1,), points_per_side=4) is None
    assert "finding objects like [3] is still running" in ann.last_message
    assert ann.everything_layer is None
    del ann.runner._active[99]
    assert ann.segment_everything(slice=(1,), points_per_side=4, pred_iou_thresh=0.5,
                                  stability_score_thresh=0.0) is not None


def test_everything_on_the_whole_stack_needs_a_stack(viewer, disk_predictor):
    image = viewer.add_image(noise_stack((1, 40, 40))[0])
    ann = Annotator(viewer, image, predictor=disk_predictor)
    assert ann.segment_everything(stack=True, points_per_side=4) is None
    assert ann.everything_layer is None


def test_prompts_collected_once_per_click_and_affines_cached(viewer, disk_predictor,
                                                             monkeypatch):
    """issue 15: a click collected the prompts 2-3 times, each rebuilding the affines."""
    import napari_sam.annotation.layer_set as layer_set
    import napari_sam.annotation.prompt_layers as prompt_layers

    image = viewer.add_image(noise_stack((4, 40, 40)), scale=SCALE, translate=TRANSLATE)
    ann = Annotator(viewer, image, predictor=disk_predictor, auto_segment=True)
    viewer.dims.set_current_step(0, 2)
    ann.embedding((2,))  # cached: the click decodes at once
    collected, probed = [], []
    real_collect, real_affine = prompt_layers.collect_slice_prompts, layer_set.layer_affine
    monkeypatch.setattr(prompt_layers, "collect_slice_prompts",
                        lambda *a, **k: collected.append(1) or real_collect(*a, **k))
    monkeypatch.setattr(layer_set, "layer_affine",
                        lambda *a, **k: probed.append(1) or real_affine(*a, **k))
    ann.add_point((2, 20, 20))
    assert ann.preview is not None and len(collected) == 1
    first = len(probed)
    ann.add_point((2, 22, 20))
    assert len(collected) == 2 and len(probed) == first  # transforms not probed again
    ann.points_layer.translate = (0.0, 1.0, 0.0)  # a transform change: recomputed
    ann.add_point((2, 25, 20))
    assert len(probed) > first
    np.testing.assert_allclose(ann.prompts().objects[0].points[-1], [25, 20])
