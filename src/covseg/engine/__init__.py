"""What training and inference share: inferers, input adapters and the segmenter that joins them.

- :mod:`covseg.engine.inferers`: array → logits at the input's size (``resize``, ``sliding_window``,
  ``slices``), named in the run description.
- :mod:`covseg.engine.adapters`: model inputs beside the image (``prior`` channel, ``text``).
- :mod:`covseg.engine.segmenter`: :class:`Segmenter`, a model + preprocessing + adapters + inferer.
"""
