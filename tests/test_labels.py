"""Tests for napari_sam.labels: writing masks without losing existing labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.labels import (
    LabelEdit,
    apply_edit,
    ensure_dtype,
    next_label_id,
    plan_objects,
    plan_write,
    required_dtype,
    revert_edit,
    write_object,
    write_objects,
)


class SpyArray:
    """Array-like over numpy that records every basic-indexing key used."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...] | None = None):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        if chunks is not None:
            self.chunks = chunks
        self.reads: list[tuple] = []
        self.writes: list[tuple] = []

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        assert all(isinstance(k, (int, slice)) for k in key), key
        self.reads.append(key)
        return self.data[key].copy()

    def __setitem__(self, key, value):
        key = key if isinstance(key, tuple) else (key,)
        assert all(isinstance(k, (int, slice)) for k in key), key
        self.writes.append(key)
        self.data[key] = value


def _existing_3d() -> np.ndarray:
    labels = np.zeros((4, 10, 12), dtype=np.uint16)
    labels[2, 2:6, 2:6] = 3  # user's object overlapping the mask below
    labels[1, 0:3, 0:3] = 9  # another slice, must never change
    return labels


def _square_mask(shape=(10, 12)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[4:8, 4:9] = True
    return mask


# --------------------------------------------------------------------------
# ids and dtypes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(np.zeros((3, 4), np.uint8), 1, id="all-background"),
        pytest.param(np.zeros((0, 4), np.uint8), 1, id="empty"),
        pytest.param(np.array([[0, 5], [2, 0]], np.uint16), 6, id="max-plus-one"),
        pytest.param(np.array([[-4, -1]], np.int32), 1, id="negative-only"),
        pytest.param(np.array([[255]], np.uint8), 256, id="uint8-full"),
    ],
)
def test_next_label_id_numpy(data, expected):
    assert next_label_id(data) == expected


def test_next_label_id_dask():
    da = pytest.importorskip("dask.array")
    data = np.zeros((6, 8, 8), np.uint32)
    data[5, 7, 7] = 41
    assert next_label_id(da.from_array(data, chunks=(1, 8, 8))) == 42


def test_next_label_id_blockwise_reads_only_chunks():
    data = np.zeros((6, 8, 8), np.uint16)
    data[4, 1, 1] = 17
    spy = SpyArray(data, chunks=(1, 8, 8))
    import napari_sam.labels._checks as mod

    old = mod.BLOCK_BYTES
    mod.BLOCK_BYTES = 2 * 8 * 8 * 2  # two planes per block
    try:
        assert next_label_id(spy) == 18
    finally:
        mod.BLOCK_BYTES = old
    assert [k[0] for k in spy.reads] == [slice(0, 2), slice(2, 4), slice(4, 6)]


def test_next_label_id_zarr():
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store={}, shape=(5, 8, 9), chunks=(1, 8, 9), dtype="uint16")
    z[3, 2, 2] = 300
    assert next_label_id(z) == 301


def test_next_label_id_rejects_float():
    with pytest.raises(TypeError, match="integer dtype"):
        next_label_id(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize(
    ("dtype", "label_id", "expected"),
    [
        pytest.param(np.uint8, 255, np.uint8, id="uint8-fits"),
        pytest.param(np.uint8, 256, np.uint16, id="uint8-to-uint16"),
        pytest.param(np.uint8, 70_000, np.uint32, id="uint8-to-uint32"),
        pytest.param(np.uint16, 65_536, np.uint32, id="uint16-to-uint32"),
        pytest.param(np.uint32, 2**32, np.uint64, id="uint32-to-uint64"),
        pytest.param(np.int8, 128, np.int16, id="int8-to-int16"),
        pytest.param(np.int32, 2**31, np.int64, id="int32-to-int64"),
        pytest.param(np.int32, 7, np.int32, id="int32-fits"),
    ],
)
def test_required_dtype(dtype, label_id, expected):
    assert required_dtype(dtype, label_id) == np.dtype(expected)


@pytest.mark.parametrize(
    ("dtype", "label_id", "error"),
    [
        pytest.param(np.uint64, 2**64, ValueError, id="beyond-uint64"),
        pytest.param(np.int64, 2**63, ValueError, id="beyond-int64"),
        pytest.param(np.uint8, -1, ValueError, id="negative-unsigned"),
        pytest.param(np.float32, 3, TypeError, id="float-dtype"),
        pytest.param(np.uint8, 3.0, TypeError, id="float-id"),
    ],
)
def test_required_dtype_errors(dtype, label_id, error):
    with pytest.raises(error):
        required_dtype(dtype, label_id)


def test_ensure_dtype_upcasts_uint8_full():
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 255
    same = ensure_dtype(labels, 255)
    assert same is labels
    new_id = next_label_id(labels)
    assert new_id == 256
    up = ensure_dtype(labels, new_id)
    assert up.dtype == np.uint16
    np.testing.assert_array_equal(up, labels)
    edit = write_object(up, np.ones((4, 4), bool), label_id=new_id)
    assert edit.n_pixels == 15 and up[0, 0] == 255 and up[3, 3] == 256


def test_ensure_dtype_zarr_needs_new_array():
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store={}, shape=(4, 4), chunks=(4, 4), dtype="uint8")
    with pytest.raises(ValueError, match="uint16"):
        ensure_dtype(z, 256)


def test_plan_write_id_too_large_for_dtype():
    labels = np.full((3, 3), 255, np.uint8)
    labels[0, 0] = 0
    with pytest.raises(ValueError, match=r"ensure_dtype.*uint16"):
        plan_write(labels, np.ones((3, 3), bool))


# --------------------------------------------------------------------------
# plan / apply / revert
# --------------------------------------------------------------------------


def test_preserves_existing_labels_without_overwrite():
    labels = _existing_3d()
    before = labels.copy()
    edit = write_object(labels, _square_mask(), slice_index=(2,))
    assert edit.label_id == edit.value == 10  # max(3, 9) + 1
    mask = _square_mask()
    # user's object untouched, including where the mask overlapped it
    assert (labels[2][before[2] == 3] == 3).all()
    assert (labels[2][mask & (before[2] == 0)] == 10).all()
    assert edit.n_pixels == int(np.count_nonzero(mask & (before[2] == 0)))
    assert edit.n_skipped == int(np.count_nonzero(mask & (before[2] != 0)))
    # other slices untouched
    np.testing.assert_array_equal(np.delete(labels, 2, axis=0), np.delete(before, 2, axis=0))
    assert (edit.previous_values == 0).all()


def test_overwrite_true_replaces_and_reverts():
    labels = _existing_3d()
    before = labels.copy()
    mask = _square_mask()
    edit = write_object(labels, mask, slice_index=(2,), label_id=5, overwrite=True)
    assert (labels[2][mask] == 5).all()
    assert edit.n_pixels == int(mask.sum())
    assert set(np.unique(edit.previous_values)) == {0, 3}
    revert_edit(labels, edit)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize(
    ("shape", "slice_index"),
    [
        pytest.param((10, 12), (), id="2d-YX"),
        pytest.param((4, 10, 12), (3,), id="3d-ZYX"),
        pytest.param((3, 4, 10, 12), (1, 2), id="4d-TZYX"),
        pytest.param((3, 4, 10, 12), (np.int64(2), np.int32(0)), id="4d-numpy-ints"),
    ],
)
def test_slice_indexing(shape, slice_index):
    labels = np.zeros(shape, np.int32)
    mask = _square_mask()
    edit = write_object(labels, mask, slice_index=slice_index)
    assert len(edit.indices) == len(shape)
    expected = np.zeros(shape, np.int32)
    expected[tuple(int(i) for i in slice_index)][mask] = 1
    np.testing.assert_array_equal(labels, expected)
    # the indices are exactly napari/numpy fancy indices
    again = np.zeros(shape, np.int32)
    again[edit.indices] = edit.value
    np.testing.assert_array_equal(again, expected)


def test_full_shape_mask_with_slice_index_none():
    labels = np.zeros((3, 6, 6), np.uint16)
    labels[1, 1, 1] = 4
    mask = np.zeros((3, 6, 6), bool)
    mask[0:2, 0:3, 0:3] = True
    edit = write_object(labels, mask, slice_index=None)
    assert edit.label_id == 5 and labels[1, 1, 1] == 4
    assert edit.n_pixels == 17 and edit.n_skipped == 1


def test_empty_mask_gives_empty_edit():
    labels = np.zeros((5, 5), np.uint8)
    edit = write_object(labels, np.zeros((5, 5), bool), label_id=2)
    assert edit.n_pixels == 0 and all(i.size == 0 for i in edit.indices)
    assert not labels.any()
    revert_edit(labels, edit)


def test_revert_restores_exactly_random():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(3, 16, 16)).astype(np.uint16)
    before = labels.copy()
    mask = rng.random((16, 16)) > 0.5
    edits = [
        write_object(labels, mask, slice_index=(1,), overwrite=True),
        write_object(labels, ~mask, slice_index=(1,), overwrite=False),
    ]
    for edit in reversed(edits):
        revert_edit(labels, edit)
    np.testing.assert_array_equal(labels, before)


def test_edit_is_immutable():
    labels = np.zeros((4, 4), np.uint8)
    edit = plan_write(labels, np.ones((4, 4), bool), label_id=1)
    with pytest.raises(ValueError, match="read-only"):
        edit.indices[0][0] = 3
    with pytest.raises(AttributeError):
        edit.value = 2  # type: ignore[misc]


def test_stale_edit_is_refused():
    labels = np.zeros((4, 4), np.uint8)
    edit = plan_write(labels, np.ones((4, 4), bool), label_id=1)
    labels[0, 0] = 7  # user painted after planning
    with pytest.raises(ValueError, match="1 of 16 pixels"):
        apply_edit(labels, edit)
    assert labels[0, 0] == 7 and labels.sum() == 7  # nothing written
    apply_edit(labels, edit, check=False)  # explicit force
    labels[1, 1] = 2
    with pytest.raises(ValueError, match="no longer hold"):
        revert_edit(labels, edit)


@pytest.mark.parametrize(
    ("shape", "mask_shape", "kwargs", "error", "match"),
    [
        pytest.param(
            (4, 10, 12),
            (10, 11),
            {"slice_index": (0,)},
            ValueError,
            r"\(10, 11\).*\(10, 12\)",
            id="2d-mask-shape",
        ),
        pytest.param(
            (4, 10, 12),
            (10, 12),
            {"slice_index": None},
            ValueError,
            r"\(10, 12\).*\(4, 10, 12\).*slice_index",
            id="full-mask-shape",
        ),
        pytest.param(
            (4, 10, 12),
            (10, 12),
            {"slice_index": (4,)},
            IndexError,
            r"out of range \[0, 4\)",
            id="slice-out-of-range",
        ),
        pytest.param(
            (4, 10, 12),
            (10, 12),
            {"slice_index": (-1,)},
            IndexError,
            "out of range",
            id="slice-negative",
        ),
        pytest.param(
            (4, 10, 12),
            (10, 12),
            {"slice_index": ()},
            ValueError,
            "has 0 entries",
            id="slice-too-short",
        ),
        pytest.param(
            (4, 10, 12),
            (10, 12),
            {"slice_index": (0, 0)},
            ValueError,
            "has 2 entries",
            id="slice-too-long",
        ),
        pytest.param(
            (4, 10, 12),
            (10, 12),
            {"slice_index": 1},
            TypeError,
            r"\(1,\)",
            id="slice-bare-int",
        ),
        pytest.param(
            (10, 12),
            (10, 12),
            {"label_id": 0},
            ValueError,
            ">= 1",
            id="zero-id",
        ),
        pytest.param(
            (10, 12),
            (10, 12),
            {"label_id": -3},
            ValueError,
            "-3",
            id="negative-id",
        ),
        pytest.param(
            (10, 12),
            (10, 12),
            {"label_id": True},
            TypeError,
            "integer",
            id="bool-id",
        ),
    ],
)
def test_plan_write_errors(shape, mask_shape, kwargs, error, match):
    labels = np.zeros(shape, np.uint16)
    with pytest.raises(error, match=match):
        plan_write(labels, np.ones(mask_shape, bool), **kwargs)


def test_non_bool_mask_rejected():
    with pytest.raises(TypeError, match="boolean"):
        plan_write(np.zeros((3, 3), np.uint8), np.ones((3, 3), np.uint8))


def test_apply_edit_shape_mismatch():
    edit = plan_write(np.zeros((2, 3, 3), np.uint8), np.ones((3, 3), bool), slice_index=(1,))
    with pytest.raises(ValueError, match="3 axes"):
        apply_edit(np.zeros((3, 3), np.uint8), edit)
    with pytest.raises(ValueError, match="outside labels shape"):
        apply_edit(np.zeros((1, 3, 3), np.uint8), edit)


# --------------------------------------------------------------------------
# lazy / chunked labels
# --------------------------------------------------------------------------


def test_chunked_labels_read_and_write_only_the_slice():
    data = np.zeros((5, 10, 12), np.uint16)
    data[1, 0, 0] = 6
    spy = SpyArray(data, chunks=(1, 10, 12))
    mask = _square_mask()
    edit = write_object(spy, mask, slice_index=(3,), label_id=7)
    assert spy.reads and spy.writes
    for key in spy.reads:
        assert key[0] == 3 or key[0] == slice(3, 4), key
    for key in spy.writes:
        assert key[0] == slice(3, 4), key
    # bounding box of the mask only
    assert spy.writes == [(slice(3, 4), slice(4, 8), slice(4, 9))]
    assert (data[3][mask] == 7).all() and data[1, 0, 0] == 6
    revert_edit(spy, edit)
    assert not data[3].any()


def test_zarr_labels_write_and_revert():
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store={}, shape=(4, 10, 12), chunks=(1, 10, 12), dtype="uint16")
    z[...] = _existing_3d()
    before = z[...]
    edit = write_object(z, _square_mask(), slice_index=(2,))
    ref = _existing_3d()
    ref_edit = write_object(ref, _square_mask(), slice_index=(2,))
    np.testing.assert_array_equal(z[...], ref)
    assert edit.n_pixels == ref_edit.n_pixels
    revert_edit(z, edit)
    np.testing.assert_array_equal(z[...], before)


def test_dask_labels_plan_but_not_write():
    da = pytest.importorskip("dask.array")
    labels = da.from_array(_existing_3d(), chunks=(1, 10, 12))
    edit = plan_write(labels, _square_mask(), slice_index=(2,))
    assert edit.label_id == 10 and edit.n_skipped > 0
    with pytest.raises(TypeError, match="read-only"):
        apply_edit(labels, edit)


# --------------------------------------------------------------------------
# several objects
# --------------------------------------------------------------------------


def _big_and_small() -> tuple[np.ndarray, np.ndarray]:
    big = np.zeros((10, 12), bool)
    big[1:9, 1:11] = True
    small = np.zeros((10, 12), bool)
    small[3:5, 3:5] = True
    return big, small


@pytest.mark.parametrize("overwrite", [False, True], ids=["keep", "overwrite"])
def test_write_objects_smaller_wins(overwrite):
    labels = np.zeros((10, 12), np.uint8)
    labels[0:2, 0:2] = 1
    big, small = _big_and_small()
    edits = write_objects(labels, [big, small], overwrite=overwrite)
    assert [e.label_id for e in edits] == [2, 3]  # ids follow input order
    assert (labels[small] == 3).all()  # big one listed first does not swallow it
    assert labels[5, 8] == 2
    assert labels[1, 1] == (2 if overwrite else 1)
    assert edits[0].n_skipped == int(small.sum()) + (0 if overwrite else 1)
    # disjoint edits: revert in any order
    for edit in edits:
        revert_edit(labels, edit)
    assert labels.sum() == 4 and (labels[0:2, 0:2] == 1).all()


def test_write_objects_first_priority():
    labels = np.zeros((10, 12), np.uint8)
    big, small = _big_and_small()
    edits = write_objects(labels, np.stack([big, small]), priority="first")
    assert (labels[big] == 1).all() and edits[1].n_pixels == 0
    assert edits[1].n_skipped == int(small.sum())


def test_write_objects_explicit_ids_and_slice():
    labels = np.zeros((2, 10, 12), np.uint16)
    big, small = _big_and_small()
    edits = write_objects(labels, [small, big], slice_index=(1,), label_ids=[40, 30])
    assert (labels[1][small] == 40).all() and labels[1, 8, 10] == 30
    assert not labels[0].any()
    assert all(len(e.indices) == 3 for e in edits)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"label_ids": [2]}, ValueError, "2 masks", id="too-few-ids"),
        pytest.param({"label_ids": [2, 2]}, ValueError, "distinct", id="duplicate-ids"),
        pytest.param({"label_ids": [2, 300]}, ValueError, "uint16", id="id-too-large"),
        pytest.param({"priority": "largest"}, ValueError, "priority", id="bad-priority"),
    ],
)
def test_write_objects_errors_write_nothing(kwargs, error, match):
    labels = np.zeros((10, 12), np.uint8)
    with pytest.raises(error, match=match):
        write_objects(labels, list(_big_and_small()), **kwargs)
    assert not labels.any()


def test_plan_objects_mask_shapes_must_agree():
    with pytest.raises(ValueError, match="same shape"):
        plan_objects(np.zeros((4, 4), np.uint8), [np.ones((4, 4), bool), np.ones((3, 4), bool)])


def test_plan_objects_empty():
    assert plan_objects(np.zeros((4, 4), np.uint8), []) == []


def test_labeledit_validates_lengths():
    with pytest.raises(ValueError, match="n_pixels=2"):
        LabelEdit((np.array([0, 1]), np.array([0])), 1, 1, 2, np.zeros(2, np.uint8))


# --------------------------------------------------------------------------
# napari compatibility (no viewer, no Qt)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def Labels():
    layers = pytest.importorskip("napari.layers")
    return layers.Labels


def test_napari_data_setitem_and_undo(Labels):
    data = _existing_3d()
    original = data.copy()
    layer = Labels(data)
    edit = plan_write(layer.data, _square_mask(), slice_index=(2,))
    layer.data_setitem(edit.indices, edit.value)
    expected = original.copy()
    apply_edit(expected, edit)
    np.testing.assert_array_equal(layer.data, expected)
    assert (layer.data[2][original[2] == 3] == 3).all()  # user's labels kept
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)
    layer.redo()
    np.testing.assert_array_equal(layer.data, expected)


def test_napari_block_history_is_one_undo_step(Labels):
    data = np.zeros((2, 10, 12), np.uint16)
    data[1, 0, 0] = 5
    original = data.copy()
    layer = Labels(data)
    edits = plan_objects(layer.data, list(_big_and_small()), slice_index=(1,))
    with layer.block_history():
        for edit in edits:
            layer.data_setitem(edit.indices, edit.value)
    assert set(np.unique(layer.data[1])) == {0, 5, 6, 7}
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)


def test_napari_upcast_keeps_undo(Labels):
    data = np.zeros((6, 6), np.uint8)
    data[0, 0] = 255
    original = data.copy()
    layer = Labels(data)
    first = plan_write(layer.data, np.eye(6, dtype=bool), label_id=254)
    layer.data_setitem(first.indices, first.value)
    new_id = next_label_id(layer.data)
    with pytest.raises(OverflowError):  # what napari does without the upcast
        layer.data_setitem((np.array([5]), np.array([0])), new_id)
    upcast = ensure_dtype(layer.data, new_id)
    assert upcast is not layer.data
    layer.data = upcast
    edit = plan_write(layer.data, np.ones((6, 6), bool), label_id=new_id)
    layer.data_setitem(edit.indices, edit.value)
    assert layer.data.dtype == np.uint16 and layer.data[5, 0] == 256
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)


# --------------------------------------------------------------------------
# writers: one interface, napari layer or array
# --------------------------------------------------------------------------


def test_layer_writer_write_is_one_undo_step_and_upcasts(Labels):
    from napari_sam.labels import LayerWriter, resolve_label_ids

    data = np.zeros((2, 10, 12), np.uint8)
    data[1, 0, :] = 255
    original = data.copy()
    layer = Labels(data)
    writer = LayerWriter(layer)
    big, small = _big_and_small()
    ids = resolve_label_ids(None, 2, layer.data)
    assert ids == [256, 257]
    result = writer.write_objects([big, small], (1,), ids)
    assert result.upcast == (np.dtype(np.uint8), np.dtype(np.uint16))
    assert result.written == [256, 257] and result.skipped == []
    assert (layer.data[1][small] == 257).all() and (layer.data[1, 0] == 255).all()
    assert result.n_pixels == [int((big & ~small).sum()), int(small.sum())]
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)


def test_layer_writer_group_and_write_slices_are_one_step(Labels):
    from napari_sam.labels import LayerWriter

    layer = Labels(np.zeros((4, 8, 8), np.uint16))
    layer.data[0, 0, 0] = 5
    writer = LayerWriter(layer)
    eye = np.eye(8, dtype=bool)
    with writer.group():
        pixels = writer.write_slices({(z,): {7: eye} for z in (1, 2, 3)})
        writer.write_objects([np.ones((8, 8), bool)], (0,), [9])  # nested: same step
    assert pixels == {7: 24} and (layer.data[0] == 9).sum() == 63
    layer.undo()
    assert not (layer.data == 7).any() and not (layer.data == 9).any()
    assert layer.data[0, 0, 0] == 5


def test_layer_writer_error_inside_a_group_keeps_what_was_written_as_one_step(Labels):
    from napari_sam.labels import LayerWriter

    layer = Labels(np.zeros((3, 8, 8), np.uint16))
    writer = LayerWriter(layer)
    with pytest.raises(ValueError, match="slice shape"), writer.group():
        writer.write_slices({(0,): {1: np.eye(8, dtype=bool)}})
        writer.write_slices({(1,): {2: np.ones((4, 4), bool)}})  # wrong shape: nothing
    assert (layer.data == 1).sum() == 8 and not (layer.data == 2).any()
    layer.data_setitem((np.array([2]), np.array([0]), np.array([0])), 3)  # a later edit
    layer.undo()  # only the later edit: the group was committed on its own
    assert (layer.data == 1).sum() == 8
    layer.undo()
    assert not layer.data.any()


@pytest.mark.parametrize("kind", ["numpy", "zarr"])
def test_array_writer_writes_all_or_nothing(kind):
    from napari_sam.labels import ArrayWriter

    labels = _existing_3d()
    if kind == "zarr":
        zarr = pytest.importorskip("zarr")
        z = zarr.create_array(store={}, shape=labels.shape, chunks=(1, 10, 12), dtype="uint16")
        z[...] = labels
        labels = z
    before = np.asarray(labels[...]).copy()
    writer = ArrayWriter(labels)
    result = writer.write_objects([_square_mask()], (2,), [11])
    assert result.written == [11] and (np.asarray(writer.data[2])[_square_mask()] != 0).all()
    assert np.asarray(writer.data[2])[3, 3] == 3  # the user's object kept
    with pytest.raises(IndexError), writer.group():
        writer.write_slices({(0,): {12: _square_mask()}})
        writer.write_slices({(9,): {13: _square_mask()}})  # no slice 9
    after = np.asarray(writer.data[...])
    assert not (after == 12).any()  # the failed group was reverted
    assert ((after == 11) == ((np.arange(4)[:, None, None] == 2) & _square_mask()
                              & (before == 0))).all()
