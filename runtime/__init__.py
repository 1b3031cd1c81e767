"""Lean, torch-free inference runtime: manifest, backends (ONNX Runtime, OpenVINO, TensorRT), video pipeline.

Must never import torch or ``training`` (a test checks it).
"""
