"""Runnable adapters: peers' blocks rebuilt on fastlam modules (see each file's docstring)."""
