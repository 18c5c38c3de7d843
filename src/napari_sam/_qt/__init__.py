"""Qt widgets of napari-sam-stack (the only package besides ``annotator`` that imports Qt).

* :mod:`.annotator_widget`: the dock widget (``AnnotatorWidget``).
* :mod:`.model_selector`: model and device menus.
* :mod:`.hover`: throttled hover preview.
* :mod:`.key_bindings`: the annotator's key bindings.
"""
