"""npe2 writer: a Labels layer to a TIFF file that keeps its voxel size."""

from __future__ import annotations

from typing import Any

__all__ = ["write_labels"]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer with :func:`napari_sam.io.write_labels_tiff`.

    Parameters
    ----------
    path : output ``.tif``/``.tiff`` path
    data : the layer's label array (``(..., Y, X)`` integers; numpy, dask or zarr)
    meta : the layer's attributes; ``scale`` is stored as the pixel size

    Returns
    -------
    list of str
        The written path.
    """
    from napari_sam.io import write_labels_tiff

    scale = meta.get("scale")
    written = write_labels_tiff(path, data, scale=None if scale is None else tuple(scale))
    return [str(written)]
