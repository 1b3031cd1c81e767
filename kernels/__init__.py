"""Fused CUDA kernels and TensorRT plugins, with NumPy references. Imports nothing else from the project."""
