"""Benchmarks and static (ahead-of-time) checks of fastlam's kernels; not part of the package."""
