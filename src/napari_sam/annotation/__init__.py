"""Qt- and napari-free helpers of the napari annotator.

* :mod:`.slicing`: the image geometry (leading axes, 2D slice shape, RGB),
  affine maps between a layer's data coordinates and world coordinates, and
  which slice a world position belongs to.
* :mod:`.prompts`: turning point/shape layer data into per-object SAM prompts
  of one slice, and decoding them against a slice embedding.
* :mod:`.store_link`: which embedding store (if any) keeps an image's slice
  embeddings on disk for the annotator, and the fall-backs to memory.

These modules take plain arrays (and, in :func:`.slicing.layer_affine`, any
object with napari's ``world_to_data``/``data_to_world`` methods), so they are
tested without a viewer.
"""
