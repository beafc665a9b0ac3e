"""Readable PyTorch references of SPEC.md, one module per family."""

from deepseek_attn.reference.attention import attention_ref, merge_partials, visible_mask
from deepseek_attn.reference.core import (attention_core_ref, dequantize_latent_fp8_ref,
                                          quantize_latent_fp8_ref)
from deepseek_attn.reference.mla import (mla_attention_ref, mla_config_scale, mla_decode_ref,
                                         mla_inv_freq, mla_latent_ref, mla_query_ref,
                                         rms_norm_ref, rope_interleaved_ref, yarn_inv_freq,
                                         yarn_mscale)
from deepseek_attn.reference.fp8 import (dequantize_act_ref, dequantize_weight_ref, fp8_gemm_ref,
                                         quantize_act_ref, quantize_weight_ref)
from deepseek_attn.reference.sparse import (dsa_attention_ref, dsa_indexer_ref, hadamard_ref,
                                            indexer_kl_loss_ref, indexer_logits_fp8_ref,
                                            indexer_logits_ref, indexer_topk_ref,
                                            mla_compressed_query_ref, quantize_indexer_fp8_ref,
                                            rope_rotate_half_ref, selected_keys_mask)
from deepseek_attn.reference.nsa import (nsa_attention_ref, nsa_branches_ref, nsa_compress_ref,
                                         nsa_compression_attention_ref, nsa_compression_mask,
                                         nsa_config_ref, nsa_gates_ref, nsa_num_compressed,
                                         nsa_num_selection_blocks, nsa_projections_ref,
                                         nsa_rope_ref, nsa_select_blocks_ref,
                                         nsa_selection_attention_ref, nsa_selection_mask,
                                         nsa_selection_scores_ref, nsa_window_attention_ref,
                                         nsa_window_mask)

__all__ = ["attention_ref", "attention_core_ref", "quantize_latent_fp8_ref",
           "dequantize_latent_fp8_ref", "mla_decode_ref", "mla_attention_ref", "mla_query_ref",
           "mla_latent_ref", "mla_config_scale", "mla_inv_freq", "yarn_inv_freq", "yarn_mscale",
           "rope_interleaved_ref", "rms_norm_ref", "merge_partials", "visible_mask",
           "quantize_act_ref", "quantize_weight_ref", "dequantize_act_ref", "dequantize_weight_ref",
           "fp8_gemm_ref", "hadamard_ref", "rope_rotate_half_ref", "mla_compressed_query_ref",
           "dsa_indexer_ref", "indexer_logits_ref", "indexer_logits_fp8_ref",
           "quantize_indexer_fp8_ref", "indexer_topk_ref", "selected_keys_mask",
           "dsa_attention_ref", "indexer_kl_loss_ref", "nsa_attention_ref", "nsa_branches_ref",
           "nsa_compress_ref", "nsa_compression_attention_ref", "nsa_compression_mask",
           "nsa_config_ref", "nsa_gates_ref", "nsa_num_compressed", "nsa_num_selection_blocks",
           "nsa_projections_ref", "nsa_rope_ref", "nsa_select_blocks_ref",
           "nsa_selection_attention_ref", "nsa_selection_mask", "nsa_selection_scores_ref",
           "nsa_window_attention_ref", "nsa_window_mask"]
