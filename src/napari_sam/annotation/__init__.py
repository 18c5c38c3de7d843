"""The parts of the napari annotator (:class:`napari_sam.Annotator` builds and wires them).

State and jobs:

* :mod:`.state`: :class:`~.state.AnnotatorState`, the one evented object the
  widget observes (preview, running jobs with progress, last commit, everything
  result, current slice, messages).
* :mod:`.jobs`: typed :class:`~.jobs.Job` s (embed, propagate, everything,
  adapt) and the :class:`~.jobs.JobRunner` that runs them, blocking or in a
  worker; :mod:`.napari_worker` is the one place a job meets a thread.
* :mod:`.stack_jobs`: the propagation, everything and adapt jobs.
* :mod:`.actions`: the action table the widget's buttons and the key bindings
  come from.

Layers, prompts, results:

* :mod:`.layer_set`: the annotator's napari layers and their (cached) transforms.
* :mod:`.prompt_layers`, :mod:`.prompts`, :mod:`.layers`, :mod:`.slicing`:
  prompts of a slice from the Points/Shapes layers, in image pixels.
* :mod:`.segmenting`, :mod:`.preview`: prompts -> preview -> commit.
* :mod:`.stack`, :mod:`.propagating`: propagation and everything mode on layers.
* :mod:`.embedder`, :mod:`.scheduler`, :mod:`.store_link`: slice embeddings
  (cache, background queue, on-disk store).

Every module is Qt-free and napari-free (layers are duck-typed) except the
napari glue :mod:`.layer_set` and :mod:`.napari_worker`, which import napari
inside functions only; ``tests/test_layering.py`` checks each module.
"""
