"""The long jobs of the annotator, as Qt-free plans: propagate, everything, adapt.

Each function returns a :class:`~napari_sam.annotation.jobs.Job` whose
generator does the work off the GUI thread (reading the image through the
:class:`~napari_sam.annotation.embedder.SliceEmbedder`, never through a layer);
the annotator attaches the main-thread callbacks that show or write the
results. The same jobs run blocking in scripts.

z is the last leading axis of the image (for ``(T, Z, Y, X)`` images the time
point stays fixed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from functools import partial
from typing import Any

import numpy as np

from napari_sam.annotation.jobs import Job, Status, reporting

__all__ = ["adapt_job", "everything_job", "propagation_job", "stack_at"]

Index = tuple[int, ...]
Limits = tuple[float, float]


def stack_at(embedder: Any, lead: Index) -> Any:
    """The ``(Z, Y, X[, C])`` stack at the leading indices ``lead`` (lazy; RGBA -> RGB)."""
    source = embedder.source
    stack = source[lead] if lead else source
    if embedder.geometry.rgb and embedder.geometry.channels == 4:
        stack = stack[..., :3]
    return stack


def propagation_job(
    embedder: Any,
    lead: Index,
    seeds: dict,
    cl: Limits,
    *,
    ids: Sequence[int],
    direction: str = "both",
    z_range: Any = None,
    options: dict | None = None,
) -> Job:
    """Propagate ``seeds`` (``{id: {z: (Y, X) mask}}``) through the stack at ``lead``.

    The job yields one ``SliceUpdate`` per slice
    (:func:`napari_sam.propagation.propagate_iter`, with the annotator's
    embeddings); ``options`` go to ``propagate_iter``.
    """

    def steps(cancel: threading.Event) -> Generator[Any, Any, Any]:
        from napari_sam.propagation import propagate_iter

        predictor = yield from embedder.loading()
        limits = yield from embedder.measuring(cl)
        starts = sorted({int(z) for keyframes in seeds.values() for z in keyframes})
        yield Status(f"from {embedder.describe((*lead, starts[0]))} "
                     f"({'both ways' if direction == 'both' else direction})")
        yield from propagate_iter(
            stack_at(embedder, lead), seeds, predictor, direction=direction, z_range=z_range,
            contrast_limits=limits, embeddings=lambda z: embedder.embedding((*lead, int(z)), cl),
            **(options or {}),
        )

    return Job("propagate", f"propagating {list(ids)}", steps,
               total=embedder.geometry.lead_shape[-1] + 1)


def everything_job(
    embedder: Any, index: Index, cl: Limits, params: dict, *, stack: bool = False
) -> Job:
    """Everything mode on slice ``index``, or (``stack``) on the stack at the leading
    indices ``index``; the job returns ``(Y, X)`` or ``(Z, Y, X)`` labels.

    Its progress is everything mode's own count (embeddings and decoder
    batches, or slices); ``cancel`` stops it between batches.
    """

    def steps(cancel: threading.Event) -> Generator[Any, Any, Any]:
        predictor = yield from embedder.loading()
        limits = yield from embedder.measuring(cl)
        call: Callable[..., Any]  # everything on the stack, or on the slice
        if stack:
            from napari_sam.everything import segment_everything_stack

            call = partial(
                segment_everything_stack, stack_at(embedder, index), predictor=predictor,
                contrast_limits=limits, cancel=cancel,
                embeddings=lambda z: embedder.embedding((*index, int(z)), cl), **params,
            )
        else:
            from napari_sam.everything import segment_everything

            yield Status(f"embedding {embedder.describe(index)}")
            embedding = embedder.embedding(index, cl)
            yield "embedded"
            call = partial(
                segment_everything, embedder.read_slice(index), predictor=predictor,
                contrast_limits=limits, embedding=embedding, cancel=cancel, **params,
            )
        yield Status("finding every object")
        result = yield from reporting(call)
        return np.asarray(result.labels)

    what = "the stack" if stack else embedder.describe(index)
    return Job("everything", f"everything on {what}", steps)


def adapt_job(
    load_predictor: Callable[[], Any], images: Any, labels: Any, **options: Any
) -> Job:
    """Fine-tune the predictor on the user's labels (:func:`napari_sam.adapt`).

    ``options`` go to ``adapt`` (``contrast_limits``, ``ids``, ``time_limit_s``,
    ``embeddings``...); progress and cancel are the job's. The job returns the
    :class:`~napari_sam.adaptation.AdaptationResult`.
    """

    def steps(cancel: threading.Event) -> Generator[Any, Any, Any]:
        from napari_sam.adaptation import adapt

        predictor = load_predictor()
        yield "model loaded"
        call = partial(adapt, predictor, images, labels, cancel=cancel, **options)
        return (yield from reporting(call))

    return Job("adapt", "adapting the model to your labels", steps)
