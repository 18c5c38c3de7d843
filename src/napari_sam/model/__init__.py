"""SAM written in torch: image encoders, prompt encoder, mask decoder, checkpoints.

Knows nothing of microscopy or napari. Importing this package imports torch.
"""
