"""fastlam: Triton-accelerated latent action world models learned from in-the-wild video."""
__version__ = "0.1.0"
