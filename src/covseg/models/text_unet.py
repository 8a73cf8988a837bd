"""Shared set-up of the text-guided encoder-decoder models (``lvit``, ``c2fvl``).

Both take a registered CNN encoder (features at strides 2..32) and a four-level decoder
(strides 16, 8, 4, 2); this base checks and records those arguments once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covseg.models.encoders import build_encoder
from covseg.models.text_layers import TextSegmentationModel


class EncoderTextModel(TextSegmentationModel):
    """A text-guided model on a registered CNN encoder with a four-level decoder."""

    size_divisor = 32

    def _setup(
        self,
        in_channels: int,
        out_channels: int,
        text_dim: int,
        encoder: str,
        pretrained: bool,
        encoder_kwargs: dict[str, Any] | None,
        decoder_widths: Sequence[int],
        norm: str,
        **model_args: Any,
    ) -> tuple[list[int], list[int]]:
        """Record the init arguments, build the encoder; returns (encoder widths, decoder widths)."""
        encoder_kwargs = dict(encoder_kwargs or {})
        widths = [int(w) for w in decoder_widths]
        TextSegmentationModel.__init__(
            self,
            in_channels,
            out_channels,
            text_dim=int(text_dim),
            encoder=encoder,
            pretrained=bool(pretrained),
            encoder_kwargs=encoder_kwargs,
            decoder_widths=widths,
            **model_args,
            norm=norm,
        )
        if len(widths) != 4:
            raise ValueError(f"decoder_widths needs 4 entries (strides 16, 8, 4, 2), got {widths}")
        self.encoder = build_encoder(encoder, in_channels, pretrained=pretrained, **encoder_kwargs)
        return list(self.encoder.out_channels), widths
