"""Export side: PyTorch → ONNX (FP32/FP16/INT8 Q/DQ) → TensorRT engines, and parity checks.

Depends on ``training`` (to build models) and ``runtime`` (backend contract). The export pipeline lands with the
export issue; this package exists so the layout and packaging are in place.
"""
