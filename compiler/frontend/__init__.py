"""Import stage: a model file or torch module becomes a validated Relax module plus its weights."""

from banana.compiler.frontend.importer import ImportedModel, TensorSpec, import_onnx, import_torch
from banana.compiler.frontend.shapes import parse_shape_override

__all__ = ["ImportedModel", "TensorSpec", "import_onnx", "import_torch", "parse_shape_override"]
