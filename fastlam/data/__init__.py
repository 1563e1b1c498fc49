"""Video data for fastlam: PyAV clip reading, a clip dataset, sample videos, synthetic clips,
the DALI loader (``fastlam.data.dali``), rank sharding, hard decode timeouts and the fused
preprocessing op (``csrc/``).

Knows nothing of the models: it produces float video ``(3, frames, H, W)`` in ``[0, 1]``
(batched ``(B, 3, frames, H, W)``) and the models normalise it themselves. PyAV is only
needed when real video is read; ``make_sprite_clips`` works without it.
"""
from .dataset import VIDEO_EXTENSIONS, VideoClipDataset, list_videos
from .preprocess import preprocess_frames, preprocess_reference
from .sampler import ShardedClipSampler
from .watchdog import DecodeTimeout, GuardedClipDataset, Watchdog
from .synthetic import make_sprite_clips
from . import video
from .video import (
    ClipTooShort,
    DecodedVideo,
    VideoDecodeError,
    VideoInfo,
    clip_to_tensor,
    decode_video,
    probe_video,
    read_clip,
)
# Not `.samples`: that is the module `python -m fastlam.data.samples` runs, and runpy warns when
# the package has already imported it. DALI itself is imported only when a loader decodes.
from .sample_videos import fetch_samples
from .dali import DaliVideoLoader

__all__ = [
    *video.__all__,  # probing, reading and decoding video, and their errors
    "VideoClipDataset",
    "list_videos",
    "fetch_samples",
    "make_sprite_clips",
    "preprocess_frames",
    "preprocess_reference",
    "ShardedClipSampler",
    "GuardedClipDataset",
    "Watchdog",
    "DecodeTimeout",
    "DaliVideoLoader",
]

