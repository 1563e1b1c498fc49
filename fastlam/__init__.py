"""fastlam: Triton-accelerated latent action world models learned from in-the-wild video."""
import re as _re

import torch as _torch

__version__ = "0.1.0"

# The oldest torch fastlam runs on: torch.optim.Muon, the default optimizer, arrived in 2.9.
# setup.py's install_requires declares the same floor (tests/test_environment.py checks both agree).
MIN_TORCH = (2, 9)


def check_torch_version(version: str | None = None) -> None:
    """ImportError naming the required version when the installed torch (or ``version``) is
    older than :data:`MIN_TORCH`."""
    if version is None:
        version = _torch.__version__
    m = _re.match(r"(\d+)\.(\d+)", str(version))
    if m and (int(m.group(1)), int(m.group(2))) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(f"fastlam needs torch >= {need} (for torch.optim.Muon), found torch {version}: "
                          f"pip install 'torch>={need}'")


check_torch_version()
