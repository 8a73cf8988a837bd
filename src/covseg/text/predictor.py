"""``TextPredictor``: predict with a text-guided run folder (``covseg predict --text ...``).

``covseg.inference.text_inputs.load_predictor`` picks this class when the run's ``model.json``
has a ``"text"`` entry. The text encoder is rebuilt from that entry (offline; a fine-tuned or
fallback encoder's weights come from the checkpoint) and the run's cached text features are
reused. ``predict_image(image, text="...")``: ``text=None`` predicts image-only (the models'
null text), which is what ``--missing-text image-only`` asks for.

With ``tta_flip`` the flipped pass gets the text with ``left``/``right`` swapped, since the
captions name image sides; the two probability maps are averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import CovsegError
from covseg.inference.predictor import Predictor
from covseg.training.run_folder import RunFolder


class TextPredictor(Predictor):
    """A text-guided model with its text encoder and preprocessing."""

    def __init__(self, model, description: dict[str, Any], run_dir: Path | None = None, text_encoder=None) -> None:
        super().__init__(model, description, run_dir)
        self.text_info: dict[str, Any] = dict(description.get("text") or {})
        self.text_encoder = text_encoder
        if self.text_info.get("input", "features") == "features" and text_encoder is None:
            raise CovsegError("text-guided model without a text encoder", run_dir)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best") -> TextPredictor:
        from covseg.text.encoder import build_text_encoder
        from covseg.training.checkpoint import load_checkpoint, model_from_checkpoint

        run = RunFolder(run_dir)
        if not run.path.is_dir():
            raise CovsegError("run folder not found", run.path)
        description = run.read_json("model.json")
        info = description.get("text") or {}
        path = run.checkpoint(checkpoint)
        if not path.exists() and checkpoint == "best":
            path = run.checkpoint("last")
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
        encoder = None
        if info.get("input", "features") == "features":
            if not info.get("encoder"):
                raise CovsegError("model.json 'text' entry names no encoder", run.path / "model.json")
            encoder = build_text_encoder(info["encoder"])
            if "text_encoder_state" in ckpt:
                encoder.load_state_dict(ckpt["text_encoder_state"])
            encoder.eval()
            if info.get("cache_file"):
                encoder.load_cache(run.path / info["cache_file"])
        return cls(model, description, run.path, encoder)

    # ------------------------------------------------------------------ text
    def text_inputs(self, texts: list[str | None]) -> dict[str, Any]:
        """The model's keyword inputs for a batch of texts."""
        from covseg.text.trainer import text_inputs

        return text_inputs(self.model, self.text_encoder, texts)

    def forward_fn(self, text: str | None = None, **_: Any):
        import torch

        with torch.inference_mode():
            inputs = self.text_inputs([text])

        def forward(x, **__):
            n = x.shape[0]
            return self.model(x, **{k: v.expand(n, *v.shape[1:]) for k, v in inputs.items()})

        return forward

    def predict_arrays(  # type: ignore[override]
        self,
        images: list[np.ndarray],
        tta_flip: bool = False,
        batch_size: int = 8,
        text: str | None = None,
        texts: list[str | None] | None = None,
        **extra: Any,
    ) -> list[np.ndarray]:
        """Probabilities per image; one ``text`` for all images, or ``texts`` (one per image)."""
        if texts is not None:
            if len(texts) != len(images):
                raise CovsegError(f"{len(texts)} texts for {len(images)} images")
            return [self.predict_arrays([img], tta_flip, 1, text=t)[0] for img, t in zip(images, texts)]
        if not tta_flip:
            return super().predict_arrays(images, tta_flip=False, batch_size=batch_size, text=text)
        from covseg.text.trainer import swap_sides

        plain = super().predict_arrays(images, tta_flip=False, batch_size=batch_size, text=text)
        flipped_images = [np.ascontiguousarray(np.flip(img, axis=1)) for img in images]
        flipped = super().predict_arrays(flipped_images, tta_flip=False, batch_size=batch_size, text=swap_sides(text))
        return [0.5 * (a + np.flip(b, axis=-1)) for a, b in zip(plain, flipped)]
