"""How an embedding store lies on disk: the zarr group, its metadata, slice chunks <-> embeddings.

Layout of ``STORE.zarr`` (a zarr group)::

    attrs["napari_sam_embeddings"]   StoreMetadata as JSON (model, image, normalization...)
    features   (*lead, C, e, e)      float16 (default) or float32, one chunk per slice;
               (*lead, n_tiles + 1, C, e, e) for tiled slices (metadata ``tiling``):
                                     the tiles in grid order, then the overview
    done       (*lead, 2)            uint64, one chunk per slice: ``(flag, checksum)``;
                                     flag 0 = not complete, otherwise the slice's digest;
                                     checksum: CRC-32 of the slice's stored features
               (*lead,)              the flag only, in stores of versions 1 and 2

A 2D image (no leading axes) is stored with a leading axis of length 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.store._metadata import (
    NotAStoreError,
    StoreMetadata,
    StoreMismatchError,
    describe_tiling,
    tiling_of_grid,
)
from napari_sam.tiling import TiledEmbedding, TileGrid

#: Key of the metadata in the zarr group's attributes.
ATTRS_KEY = "napari_sam_embeddings"
#: ``done`` value of a complete slice stored without the digest of its image.
NO_DIGEST = 1


def done_value(digest: int | None) -> int:
    """The ``done`` flag for a slice digest (never 0, which means "not complete")."""
    if digest is None:
        return NO_DIGEST
    digest = int(digest)
    return digest + 2 if digest < 2 else digest


def zarr_module():
    import zarr

    return zarr


def create_array(group: Any, name: str, **kwargs: Any) -> Any:
    """``create_array`` on zarr 3, ``create_dataset`` on zarr 2."""
    if hasattr(group, "create_array"):
        return group.create_array(name, **kwargs)
    return group.create_dataset(name, **kwargs)  # pragma: no cover - zarr 2


def is_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def read_metadata(path: Path) -> StoreMetadata:
    zarr = zarr_module()
    if not path.exists():
        raise FileNotFoundError(f"embedding store not found: {str(path)!r}")
    if not is_store(path):
        raise NotAStoreError(
            f"{str(path)!r} is not a zarr embedding store (no zarr group metadata); "
            "choose a new path for the store"
        )
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as err:  # an array, a corrupt group, an unreadable file...
        raise NotAStoreError(
            f"{str(path)!r} is not a readable zarr group ({type(err).__name__}: {err}); "
            "choose a new path for the store"
        ) from err
    if ATTRS_KEY not in attrs:
        raise NotAStoreError(
            f"{str(path)!r} is a zarr group but not a napari-sam embedding store "
            f"(no {ATTRS_KEY!r} attribute); choose a new path for the store"
        )
    return StoreMetadata.from_dict(attrs[ATTRS_KEY], path)


def embedding_of_chunk(
    metadata: StoreMetadata, grid: TileGrid | None, data: np.ndarray, where: dict, device: Any
) -> Any:
    """The embedding of one slice's chunk ``data`` (storage layout).

    Parameters
    ----------
    metadata, grid : the store's (``grid`` None for whole slices)
    data : the chunk, :attr:`StoreMetadata.chunk_shape`
    where : ``{"store": path, "index": idx}``, added to the embedding's metadata
    device : torch device of the features
    """
    import torch

    from napari_sam.predictor import Embedding, resized_shape

    features = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if str(device) != "cpu":
        features = features.to(device)
    m = metadata
    info = {"model": m.model_name, "precision": m.precision}
    limits = m.contrast_limits
    if grid is None:
        return Embedding(
            features=features[None],
            original_size=_pair(m.original_size),
            input_size=_pair(m.input_size),
            contrast_limits=limits,
            metadata={**info, **where},
        )
    tiles = []
    for i in range(len(grid)):
        r0, c0, r1, c1 = grid.window(i)
        h, w = r1 - r0, c1 - c0
        tiles.append(
            Embedding(features[i : i + 1], (h, w), resized_shape(h, w, grid.tile), limits, info)
        )
    overview = Embedding(
        features[-1:], _pair(m.original_size), _pair(m.input_size), limits, dict(info)
    )
    return TiledEmbedding.from_features(
        grid,
        tiles,
        overview,
        m.original_size,
        limits,
        {**info, "tiling": dict(m.tiling or {}), **where},
    )


def chunk_of_embedding(metadata: StoreMetadata, path: Any, embedding: Any) -> np.ndarray:
    """One slice's embedding as the store holds it (float32, :attr:`StoreMetadata.chunk_shape`).

    Parameters
    ----------
    metadata, path : the store's
    embedding : an :class:`~napari_sam.predictor.Embedding`, a
        :class:`~napari_sam.tiling.TiledEmbedding` (its missing tiles are
        computed first), or features: ``(C, e, e)`` / ``(1, C, e, e)``, or for
        a tiled store ``(n_tiles + 1, C, e, e)`` (tiles in grid order, then the
        overview), as a numpy array or torch tensor

    Raises
    ------
    StoreMismatchError
        The embedding is tiled differently from the store, or has another shape.
    """
    m = metadata

    def numpy(t: Any) -> np.ndarray:
        if hasattr(t, "detach"):
            t = t.detach().float().cpu().numpy()
        return np.asarray(t)

    if isinstance(embedding, TiledEmbedding):
        found = tiling_of_grid(embedding.grid)
        if found != m.tiling:
            raise StoreMismatchError(
                path,
                [
                    f"tiling: store {describe_tiling(m.tiling)}, this embedding "
                    f"{describe_tiling(found)}"
                ],
                hint="Embed with the predictor settings (tiling, tile_overlap) the store "
                "was computed with, or recompute the store (overwrite=True).",
            )
        embedding.compute()
        parts = [embedding.tile(i) for i in range(embedding.n_tiles)]
        parts.append(embedding.overview())
        maps = [numpy(p.features) for p in parts]
        data = np.stack([f[0] if f.ndim == 4 else f for f in maps])
    else:
        data = numpy(getattr(embedding, "features", embedding))
    shape = m.chunk_shape
    if m.tiling is None and data.shape == (1, *shape):
        data = data[0]
    if data.shape != shape:
        raise StoreMismatchError(
            path,
            [
                f"embedding shape: store {shape} ({describe_tiling(m.tiling)}), this "
                f"embedding {data.shape}"
            ],
            hint="Was the slice embedded by the store's model, with the store's tiling?",
        )
    return data


def _pair(values: Any) -> tuple[int, int]:
    h, w = values
    return int(h), int(w)
