"""Training of the bundled micro model on procedurally generated microscopy data.

Modules: :mod:`.data` (scene sampling from :mod:`napari_sam.synthetic`, normalized
exactly like the Predictor's input), :mod:`.prompts` (SAM-style prompt
simulation), :mod:`.losses` (focal + dice, IoU MSE), :mod:`.loop` (the
training run, resumable with :mod:`.resume`; the step, the interactive rounds,
the configuration, the resolution curriculum and the initializations in
:mod:`.step`, :mod:`.rounds`, :mod:`.config`, :mod:`.resolution`,
:mod:`.initialization`, :mod:`.weights`), :mod:`.validation` (held-out
quality metrics).

Command line::

    python -m napari_sam.training train --out runs/micro --minutes 50 --seed 0
    python -m napari_sam.training validate runs/micro/micro_sam_latest.pt
    python -m napari_sam.training export runs/micro

Importing this package does not import torch; its modules do.
"""
