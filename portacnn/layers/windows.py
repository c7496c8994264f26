"""Settings shared by the sliding-window layers (:class:`~portacnn.layers.Conv2D` and the
pooling layers): the padding they accept and the words ``summary()`` prints for kernel,
stride and padding."""

from __future__ import annotations

from ..kernels.shapes import check_padding, check_padding_mode, padding_pair


def _padding_spec(padding, padding_mode):
    """Validated ``(padding, padding_mode)``: a mode string or an (ph, pw) tuple."""
    check_padding(padding)
    check_padding_mode(padding_mode)
    if isinstance(padding, str):
        return padding, padding_mode
    return padding_pair(padding), padding_mode


def _padding_text(layer) -> str:
    pad = layer.padding if isinstance(layer.padding, str) else _hw(layer.padding)
    return pad + (", replicate" if layer.padding_mode == "replicate" else "")


def _hw(pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
