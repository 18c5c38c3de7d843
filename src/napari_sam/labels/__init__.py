"""Write segmentation masks into label arrays without losing existing labels.

Free of Qt, napari and torch. Works on numpy arrays and, for reading, on dask
and zarr arrays (anything with ``shape``, ``dtype`` and basic-slicing
``__getitem__``); writes go to numpy or zarr arrays, or to a napari Labels
layer through its undo history.

Conventions
-----------
* A label array ``labels`` has shape ``(*leading, Y, X)``: any number of
  leading non-spatial axes (``()`` for YX, ``(Z,)`` for ZYX, ``(T, Z)`` for
  TZYX) followed by the two axes of the 2D slice a mask belongs to. Its dtype
  is an integer dtype; ``0`` is background.
* A mask is a boolean array, either 2D ``(Y, X)`` for the slice selected by
  ``slice_index`` (one int per leading axis) or of the full ``labels.shape``
  when ``slice_index`` is None.
* A write never touches pixels outside its mask. With ``overwrite=False``
  (the default) it only writes pixels that are currently ``0``, so labels the
  user already has are never changed.

Modules
-------
* :mod:`.ids`: :func:`next_label_id`, :func:`required_dtype`,
  :func:`ensure_dtype`, :func:`resolve_label_ids`.
* :mod:`.edits`: :func:`plan_write` / :func:`plan_objects` compute
  :class:`LabelEdit` records (the pixels a mask takes), reading only the
  labels under the mask and writing nothing.
* :mod:`.writers`: :class:`LabelsWriter`, the one interface that writes
  objects (one validation pass and one undo step per call), with
  :class:`LayerWriter` (napari ``Labels``: ``data_setitem`` inside
  ``block_history()``) and :class:`ArrayWriter` (numpy/zarr).
* :mod:`.arrays`: :func:`apply_edit`, :func:`revert_edit`,
  :func:`write_object`, :func:`write_objects` on plain arrays.

Example (napari)::

    writer = LayerWriter(labels_layer)
    ids = resolve_label_ids(None, len(masks), labels_layer.data)
    result = writer.write_objects(masks, (z,), ids)   # one Ctrl+Z step
    labels_layer.undo()                               # restores the old pixels
"""

from __future__ import annotations

from napari_sam.labels.arrays import apply_edit, revert_edit, write_object, write_objects
from napari_sam.labels.edits import LabelEdit, plan_objects, plan_write
from napari_sam.labels.ids import ensure_dtype, next_label_id, required_dtype, resolve_label_ids
from napari_sam.labels.writers import ArrayWriter, CommitResult, LabelsWriter, LayerWriter

__all__ = [
    "ArrayWriter",
    "CommitResult",
    "LabelEdit",
    "LabelsWriter",
    "LayerWriter",
    "apply_edit",
    "ensure_dtype",
    "next_label_id",
    "plan_objects",
    "plan_write",
    "required_dtype",
    "resolve_label_ids",
    "revert_edit",
    "write_object",
    "write_objects",
]
