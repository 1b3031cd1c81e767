"""Helpers every layer shares, with no dependency beyond the standard library (the bottom layer, below kernels and
training): user-facing error base class, atomic file writes and hashing, and the one command-line wrapper."""
