"""Readable PyTorch references of SPEC.md, one module per family."""

from deepseek_attn.reference.attention import attention_ref, merge_partials, visible_mask

__all__ = ["attention_ref", "merge_partials", "visible_mask"]
