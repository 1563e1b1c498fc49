"""fastlam: Triton-accelerated latent action world models.

`kernels/` (all @triton.jit code, no autograd) is installed as the subpackage
`fastlam.kernels` through `package_dir`, so the repository keeps the layering
kernels <- fastlam.ops <- fastlam.nn <- fastlam.models visible at the top level
while users import everything from one package.
"""
from setuptools import setup

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
        "fastlam.eval",
        "fastlam.kernels",
    ],
    package_dir={"fastlam": "fastlam", "fastlam.kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        "numpy",
        "pyyaml",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # triton ships with CUDA torch; on CPU machines it is installed for the interpreter.
        "kernels": ["triton>=3.4"],
        "data": ["av>=12"],
        "dali": ["nvidia-dali-cuda130"],
        # Pure Python with DS_BUILD_OPS=0 (its one CPU op is JIT-built on first use); tested version.
        "dist": ["deepspeed==0.19.8"],
        "gpu": ["flash-attn", "xformers"],
        # transformers: the peer implementation the V-JEPA 2 equivalence tests compare against.
        "dev": ["pytest", "pytest-benchmark", "triton>=3.4", "av>=12", "transformers>=4.53", "deepspeed==0.19.8"],
    },
    entry_points={"console_scripts": ["fastlam-train=fastlam.train:main"]},
)
