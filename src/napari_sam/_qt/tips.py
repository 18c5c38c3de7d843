"""Tooltips of the dock widget's settings (the buttons' come from the action table)."""

__all__ = ["BATCH_TIP", "NORMALIZATION_TIP", "STOP_TIP"]

BATCH_TIP = (
    "Several positive points normally refine ONE object (SAM's convention: add points "
    "to the same nucleus to fix its outline). Tick this to make every positive point its "
    "own object, e.g. to click three nuclei at once ({key})"
)
NORMALIZATION_TIP = (
    "How slice intensities are scaled for the model. robust (whole image): one range for "
    "the whole image (0.5-99.8 percentiles), independent of the display: recommended, "
    "with napari's default contrast limits (min-max) the bundled model loses 0.02-0.10 "
    "mean IoU, and a display window that clips the objects makes it fail. display "
    "contrast limits: the layer's contrast limits (changing them re-embeds)"
)
STOP_TIP = (
    "When propagation stops following an object through z. Middle: the model's "
    "recommendation. Towards 'earlier': stricter (stops at the first dimming, low score "
    "or sudden change); towards 'later': follows objects further into dim or changing "
    "slices (the fade, score and IoU thresholds move by 0.1 per step)"
)
