"""fastlam: Triton-accelerated latent action world models.

`kernels/` (all @triton.jit code, no autograd) is installed as the subpackage
`fastlam.kernels` through `package_dir`, so the repository keeps the layering
kernels <- fastlam.ops <- fastlam.nn <- fastlam.models visible at the top level
while users import everything from one package.
"""
import os

from setuptools import setup


def _extensions():
    """The csrc/ preprocessing op, built only on request (FASTLAM_BUILD_EXT=1).

    Opt-in because it needs torch at build time (``pip install --no-build-isolation``) and a
    C++ compiler (plus nvcc when torch has CUDA), and costs ~30 s per install; without it
    fastlam.data.preprocess JIT-compiles the same sources on first use, or falls back to
    PyTorch.
    """
    if os.environ.get("FASTLAM_BUILD_EXT") != "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cflags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    if torch.version.cuda is not None and CUDA_HOME is not None:
        ext = CUDAExtension(
            "fastlam._preprocess_ext", ["csrc/preprocess.cpp", "csrc/preprocess_cuda.cu"],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cflags, "nvcc": ["-O3"]}, extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("fastlam._preprocess_ext", ["csrc/preprocess.cpp"],
                           extra_compile_args={"cxx": cflags}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension}


_EXT_MODULES, _CMDCLASS = _extensions()

setup(
    name="fastlam",
    version="0.1.0",
    description="Triton-accelerated latent action world models learned from in-the-wild video",
    python_requires=">=3.10",
    packages=[
        "fastlam",
        "fastlam.ops",
        "fastlam.nn",
        "fastlam.models",
        "fastlam.data",
        "fastlam.distributed",
        "fastlam.eval",
        "fastlam.kernels",
    ],
    package_dir={"fastlam": "fastlam", "fastlam.kernels": "kernels"},
    # Per-device tuned attention tiles (benchmarks/tune_tiles.py), read at launch.
    package_data={"fastlam.kernels": ["tuned/*.json"]},
    install_requires=[
        "torch>=2.9",  # torch.optim.Muon; fastlam.MIN_TORCH says the same (checked at import)
        "numpy",
        "pyyaml",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # triton ships with CUDA torch; on CPU machines it is installed for the interpreter.
        "kernels": ["triton>=3.4"],
        # pyarrow: Parquet manifests (fastlam.data.manifest).
        "data": ["av>=12", "pyarrow>=14"],
        # fsspec URLs for manifests and shards (aiohttp: http(s)://; add s3fs / gcsfs for s3:// gs://).
        "remote": ["fsspec>=2023.6", "aiohttp>=3.9"],
        # ~200 MB wheel, ~0.5 GB installed (+ its small pure-Python deps): GPU decoding and the CPU VP8/VP9/MJPEG
        # decoder of fastlam.data.dali. Not in `dev` (large); scripts/test.sh installs it for CI.
        "dali": ["nvidia-dali-cuda130==2.4.0"],
        # Pure Python with DS_BUILD_OPS=0 (its one CPU op is JIT-built on first use); tested version.
        "dist": ["deepspeed==0.19.8"],
        "gpu": ["flash-attn", "xformers"],
        # TensorBoard dashboard of fastlam.train (logging.tensorboard: true).
        "viz": ["tensorboard>=2.16"],
        # transformers / vector-quantize-pytorch: the peers the V-JEPA 2 and VQ-family
        # equivalence tests compare against (the latter pulls einops, einx, loguru: pure Python);
        # webdataset: the shard format's reference reader in the shard tests; pybullet: the KUKA arm
        # generator of fastlam.eval.pybullet_arm and its test (a prebuilt ~100 MB wheel, ~290 MB installed
        # with the robot models it renders).
        "dev": ["pytest", "pytest-benchmark", "triton>=3.4", "av>=12", "transformers>=4.53", "deepspeed==0.19.8",
                "vector-quantize-pytorch==1.32.0", "tensorboard>=2.16",
                "pyarrow>=14", "fsspec>=2023.6", "aiohttp>=3.9", "webdataset>=0.2.86", "pybullet>=3.2"],
    },
    ext_modules=_EXT_MODULES,
    cmdclass=_CMDCLASS,
    entry_points={"console_scripts": ["fastlam-train=fastlam.train:main"]},
)
