"""``trainer: mean_teacher``: the mean-teacher baseline (Tarvainen & Valpola, 2017) for segmentation.

A student network learns from the labelled images and, on unlabelled images, to agree with a
teacher whose weights are the exponential moving average of the student's (the consistency
term: mean squared difference of their probabilities, ramped up with the CPS ramp). The student
and the teacher see the same unlabelled images under different input noise (Gaussian, clipped,
as in UA-MT's segmentation code), the teacher without gradients and in eval mode.

The teacher is the model the run keeps: it is the trainer's weight average (``train.ema_decay``
machinery), so validation, ``best.pt`` / ``last.pt``'s ``model_state`` and prediction use it,
and the checkpoint keeps the student too, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

from covseg.errors import ConfigError
from covseg.registry import TRAINERS
from covseg.training.semi.common import draw_unlabelled_batch, load_unlabeled, sigmoid_rampup, split_outputs
from covseg.training.trainer import Trainer


def consistency_loss(student_logits, teacher_logits):
    """Mean squared difference of the two networks' probabilities (sigmoid, or softmax over classes)."""
    import torch

    if student_logits.shape[1] == 1:
        return torch.mean((torch.sigmoid(student_logits) - torch.sigmoid(teacher_logits)) ** 2)
    return torch.mean((torch.softmax(student_logits, dim=1) - torch.softmax(teacher_logits, dim=1)) ** 2)


def input_noise(x, std: float, generator):
    """Gaussian noise of ``std`` clipped to ±2 std (zero noise for ``std`` 0)."""
    import torch

    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype) * std
    return x + noise.clamp(-2 * std, 2 * std)


@TRAINERS.register("mean_teacher")
class MeanTeacherTrainer(Trainer):
    """Student on labels + consistency with its EMA teacher on unlabelled images; the teacher is kept."""

    supports_multiscale = False  # unlabelled batches are drawn at the network size

    def setup_data(self) -> None:
        super().setup_data()
        import torch

        load_unlabeled(self)
        self.pool_indices = torch.arange(len(self.unlabeled))

    def setup_optimisation(self) -> None:
        from covseg.training.averaging import WeightAverage

        mt = self.cfg.semi.mean_teacher
        ema = self.cfg.train.ema_decay
        if ema is not None and ema != mt.decay:
            raise ConfigError(
                f"trainer mean_teacher: the teacher is the weight average; train.ema_decay ({ema}) and "
                f"semi.mean_teacher.decay ({mt.decay}) disagree (leave train.ema_decay unset)"
            )
        super().setup_optimisation()
        if self.average is None:
            self.average = WeightAverage(self.model, mt.decay)

    def teacher_logits(self, x):
        """The teacher's logits of unlabelled images (eval mode, no gradient)."""
        import torch

        teacher = self.average.module
        teacher.eval()
        with torch.no_grad():
            return self.forward_train(teacher, {"image": x}, sync=False)["logits"]

    def training_step(self, batch, epoch, step, aux_generator):
        import torch

        mt = self.cfg.semi.mean_teacher
        ub = (mt.unlabeled_batch_size or self.cfg.train.batch_size) * self.runtime.world_size
        xu = draw_unlabelled_batch(self, self.pool_indices, ub, aux_generator)
        target = self.teacher_logits(input_noise(xu, mt.noise_std, aux_generator))
        student_u = input_noise(xu, mt.noise_std, aux_generator)
        nl = batch["image"].shape[0]
        joint = {"image": torch.cat([self.runtime.to_device(batch["image"]), student_u])}
        if batch.get("text") is not None:
            joint["text"] = list(batch["text"]) + [None] * student_u.shape[0]
        out, out_u = split_outputs(self.forward_train(self.model, joint), nl)
        sup, parts = self.criterion(out, batch)
        cons = consistency_loss(out_u["logits"], target)
        w = mt.weight * sigmoid_rampup(epoch + step / self.steps_per_epoch, mt.rampup_epochs)
        return sup + w * cons, {**parts, "consistency": float(cons.detach()), "consistency_weight": w}

    def step_info(self, sums: dict[str, float], n: int) -> str:
        return f"loss {sums['loss'] / n:.4f} consistency {sums['consistency'] / n:.5f}"

    def epoch_extras(self) -> dict[str, Any]:
        return {"unlabeled_used": float(len(self.unlabeled))}
