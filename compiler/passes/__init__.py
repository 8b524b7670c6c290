"""banana.compiler.passes: Relax rewrites banana applies between import and build.

``fuse_attention`` recognises decomposed (grouped-query) attention and replaces each site with one
call of banana's fused attention kernel (banana.kernels.attention); ``decompose_attention_ops``
rewrites ONNX ``Attention`` (opset 23/24) and ``com.microsoft.GroupQueryAttention`` before import
into the form that pass recognises.
"""

from banana.compiler.passes.attention import AttentionFusion, AttentionSite, SkippedSite, fuse_attention
from banana.compiler.passes.onnx_attention import decompose_attention_ops

__all__ = ["AttentionFusion", "AttentionSite", "SkippedSite", "decompose_attention_ops", "fuse_attention"]
