"""Qt widgets of napari-sam-stack (with ``annotation.napari_worker``, the only code that
touches Qt).

* :mod:`.annotator_widget`: the dock widget (``AnnotatorWidget``); its buttons come
  from the action table :data:`napari_sam.annotation.actions.ACTIONS`.
* :mod:`.job_panel`: the status line and progress bar, observing the annotator's state.
* :mod:`.model_selector`: model and device menus.
* :mod:`.hover`: throttled hover preview.
* :mod:`.key_bindings`: the annotator's key bindings (the same action table).
"""
