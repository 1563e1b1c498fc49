"""Tiny test videos encoded with PyAV, for the tests that read real files (corpus, pipeline,
fork safety); what each frame shows is the caller's, so each test keeps its own marks."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import av
import numpy as np


def encode_video(path, frames: Sequence[np.ndarray], *, codec: str = "libx264", rate=25,
                 pix_fmt: str = "yuv420p", options: dict | None = None) -> Path:
    """Encode uint8 ``(H, W, 3)`` RGB ``frames`` at ``rate`` fps into ``path`` (the container
    follows the suffix); the frame size is the first frame's."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
