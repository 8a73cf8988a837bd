"""Semi-supervised trainers, one module per method, each registered in :data:`covseg.registry.TRAINERS`.

* ``pseudo`` (:mod:`.pseudo`): supervised training plus a pseudo-labelled folder (``covseg
  pseudo-label``) as a second source with its own loss weight and a confidence cut.
* ``semi_infnet`` (:mod:`.semi_infnet`): Semi-Inf-Net's schedule (Fan et al., 2020).
* ``cps`` (:mod:`.cps`): cross pseudo supervision (Chen et al., 2021) with uncertainty-based image
  filtering and CutMix.
* ``mean_teacher`` (:mod:`.mean_teacher`): the mean-teacher baseline (Tarvainen & Valpola, 2017):
  consistency with an EMA teacher on unlabelled images; the teacher is the model kept.

All keep the base trainer's guarantees: every epoch is a function of (seed, epoch, state at its
start), the state needed to resume is in ``last.pt``, progress is shown. The losses and scores
only use the channel axis and flatten the rest, so the same code serves 2D slices and 3D patches.
"""
