"""Adaptation: the model learns from the user's labelled objects (Qt-free).

:func:`adapt` fine-tunes a copy of a predictor's model on the objects of the
user's label arrays, holds about 20 % of them back and keeps the adapted
model only when it beats the base model on those (a centre click and a tight
box per object): never worse than before. It returns an
:class:`AdaptationResult` (``.predictor``, ``.report``, ``.save(path)``); a
saved model loads with ``napari_sam.load_model(path)`` / ``Predictor(path)``.

Modules, one concept each: :mod:`.objects` (label arrays -> checked objects,
the held-back split), :mod:`.crops` (training views at the resolution the
Predictor sees), :mod:`.training` (the recipe and the fine-tuning loop on
:mod:`napari_sam.training`'s prompt simulation and losses), :mod:`.check`
(the no-worse check), :mod:`.result` (report, save/load), :mod:`.api`
(:func:`adapt`).

For a GUI worker: pass ``progress(done, total)`` and ``cancel`` (a callable
or an Event); a cancelled run raises :class:`Cancelled` and changes nothing.
"""

from __future__ import annotations

from napari_sam.adaptation.api import adapt
from napari_sam.adaptation.result import (
    AdaptationReport,
    AdaptationResult,
    SaveError,
    adapted_model_path,
    read_record,
)
from napari_sam.adaptation.training import AdaptSettings, Cancelled

__all__ = [
    "AdaptSettings",
    "AdaptationReport",
    "AdaptationResult",
    "Cancelled",
    "SaveError",
    "adapt",
    "adapted_model_path",
    "read_record",
]
