"""``clipseg``: CLIPSeg (Lüddecke & Ecker, CVPR 2022) through Hugging Face ``CLIPSegForImageSegmentation``.

CLIPSeg decodes a segmentation from the activations of a frozen CLIP ViT (layers 3, 6, 9 for
ViT-B/16) with a small transformer decoder conditioned on the CLIP embedding of a text prompt
(FiLM of the decoder tokens), the idea CRIS also follows with its text-to-pixel contrastive
decoding: a prompt-conditioned decoder over frozen vision-language features.

The weights come from a **local directory** only (``pretrained_dir``): ``config.json``,
``model.safetensors`` and the CLIP tokenizer files, as ``save_pretrained`` writes them, e.g.
a copy of ``CIDAS/clipseg-rd64-refined``. Nothing is downloaded. A plain CLIP ViT folder
(``covseg weights import --format clip --tokenizer ...``) works too: CLIP is then that folder's and
the decoder starts at random, to be trained (``clipseg_on_clip``). The model owns its tokenizer, so
its text input is token ids (``text_input = "ids"``): ``forward(x, input_ids, attention_mask)``,
with :meth:`CLIPSeg.tokenize` making them from strings.

- Inputs: covseg's normalised images (1 channel is repeated to RGB; use CLIP's mean/std in the
  preprocessing, as ``configs/clipseg_qata.yaml`` does), resized to the square ``image_size``
  the ViT expects and the logits resized back, so any input size works.
- Only the decoder trains, as CLIPSeg was trained: Hugging Face's ``CLIPSegForImageSegmentation``
  runs the CLIP towers under ``torch.no_grad()``. Checkpoints therefore hold only the decoder
  (the frozen CLIP weights are re-read from ``pretrained_dir``), so a run folder of a fine-tuned
  CLIPSeg stays small but needs that folder to predict.
- Zero-shot use without training: :func:`covseg.inference.zero_shot.make_clipseg_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from covseg.errors import CovsegError
from covseg.models.text_layers import TextSegmentationModel
from covseg.registry import MODELS
from covseg.utils.paths import expand

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _model_type(path) -> str:
    import json

    try:
        return str(json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def clipseg_on_clip(path) -> Any:
    """A CLIPSeg whose frozen CLIP is a plain CLIP folder (``covseg weights import --format clip``) and
    whose decoder starts at random (it trains, as CLIPSeg's did on frozen CLIP): CLIPSeg's default
    reduce width 64 and activations at a quarter, half and three quarters of the ViT's depth (3, 6, 9
    of ViT-B/16's 12 layers, as CLIPSeg reads them)."""
    from transformers import CLIPModel, CLIPSegConfig, CLIPSegForImageSegmentation

    from covseg.utils.hf import load_hf_pretrained

    clip = load_hf_pretrained(CLIPModel, path)
    depth = int(clip.config.vision_config.num_hidden_layers)
    config = CLIPSegConfig(
        text_config=clip.config.text_config.to_dict(),
        vision_config=clip.config.vision_config.to_dict(),
        projection_dim=int(clip.config.projection_dim),
        extract_layers=[min(depth - 1, depth * k // 4) for k in (1, 2, 3)],
    )
    net = CLIPSegForImageSegmentation(config)
    result = net.clip.load_state_dict(clip.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise CovsegError(f"CLIP folder does not fit CLIPSeg's CLIP: missing {missing[:3]}, unknown {result.unexpected_keys[:3]}", path)
    return net


class CLIPSeg(TextSegmentationModel):
    """CLIPSeg from a local Hugging Face folder: zero-shot or fine-tuned prompt segmentation."""

    text_input = "ids"
    size_divisor = 1

    def __init__(
        self,
        pretrained_dir: str | None = None,
        in_channels: int = 3,
        out_channels: int = 1,
        image_size: int | None = None,
        max_length: int = 77,
    ) -> None:
        if out_channels != 1:
            raise ValueError("clipseg predicts one binary mask per prompt (out_channels=1)")
        if in_channels not in (1, 3):
            raise ValueError(f"clipseg takes 1- or 3-channel images, got in_channels={in_channels}")
        if not pretrained_dir:
            raise CovsegError("clipseg needs model.params.pretrained_dir: a local folder with CLIPSeg weights")
        path = expand(str(pretrained_dir))
        super().__init__(
            in_channels,
            out_channels,
            pretrained_dir=str(path),
            image_size=image_size,
            max_length=int(max_length),
        )
        from transformers import AutoTokenizer, CLIPSegForImageSegmentation

        from covseg.utils.hf import load_hf_pretrained

        if not (path / "config.json").is_file():
            raise CovsegError(
                "CLIPSeg folder not found or has no config.json (nothing is downloaded: save the weights with "
                "save_pretrained, e.g. a copy of CIDAS/clipseg-rd64-refined, and give that folder)",
                path,
            )
        self.net = clipseg_on_clip(path) if _model_type(path) == "clip" else load_hf_pretrained(CLIPSegForImageSegmentation, path)
        self.tokenizer = load_hf_pretrained(AutoTokenizer, path)
        self.image_size = int(image_size or self.net.config.vision_config.image_size)
        self.max_length = int(min(max_length, self.net.config.text_config.max_position_embeddings))
        self.net.clip.requires_grad_(False)  # HF runs CLIP under no_grad: it never trains

    @property
    def text_dim(self) -> int:  # token ids, not features
        return 0

    @property
    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.in_channels == 1:
            return (sum(CLIP_MEAN) / 3,), (sum(CLIP_STD) / 3,)
        return CLIP_MEAN, CLIP_STD

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of prompts (``None`` → the empty prompt)."""
        batch = self.tokenizer(
            [t if isinstance(t, str) else "" for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    # ------------------------------------------------------------------ forward
    def _default_ids(self, x: torch.Tensor, input_ids, attention_mask):
        if input_ids is None:
            input_ids, attention_mask = self.tokenize([None] * x.shape[0])
        elif attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[0] == 1 and x.shape[0] > 1:
            input_ids, attention_mask = (
                input_ids.expand(x.shape[0], -1),
                attention_mask.expand(x.shape[0], -1),
            )
        return input_ids.long(), attention_mask.long()

    def _logits(self, x: torch.Tensor, input_ids, attention_mask) -> torch.Tensor:
        input_ids, attention_mask = self._default_ids(x, input_ids, attention_mask)
        h, w = x.shape[-2:]
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if (h, w) != (self.image_size, self.image_size):
            rgb = F.interpolate(
                rgb, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        out = self.net(pixel_values=rgb, input_ids=input_ids, attention_mask=attention_mask)
        logits = out.logits
        if logits.ndim == 2:  # some versions squeeze a batch of one
            logits = logits[None]
        logits = logits[:, None]
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    def forward_train(self, x: torch.Tensor, input_ids=None, attention_mask=None) -> dict[str, Any]:  # type: ignore[override]
        return {"logits": self._logits(x, input_ids, attention_mask)}

    def forward(self, x: torch.Tensor, input_ids=None, attention_mask=None) -> torch.Tensor:  # type: ignore[override]
        return self._logits(x, input_ids, attention_mask)

    # ------------------------------------------------------------------ weights
    @staticmethod
    def _frozen_key(key: str) -> bool:
        return key.startswith("net.clip.")

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        """The decoder's weights (the frozen CLIP is re-read from ``pretrained_dir``)."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in state if self._frozen_key(k[len(prefix) :])]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            missing = [k for k in result.missing_keys if not self._frozen_key(k)]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"clipseg checkpoint does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
                )
        return result


MODELS.register(
    "clipseg", help="CLIPSeg (Hugging Face) from a local folder: zero-shot or fine-tuned prompt segmentation"
)(CLIPSeg)
