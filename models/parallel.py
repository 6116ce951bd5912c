"""Sequence parallelism for every mixer: LASP-2 state passing with one all-gather per layer.

The sequence axis is split into W contiguous shards over the mesh axis ``axis_name`` (no causal
striping: recurrences need contiguous shards). Every recurrent mixer here is a linear recurrence
whose effect across shards is summarised by a small *memory state* of a size independent of L,
so each layer needs exactly one collective in the forward pass (Sun et al., LASP-2):

1. each shard computes the state its tokens leave behind, started from zero, and (with decay)
   its total decay;
2. ONE ``all_gather`` over ``axis_name`` of these summaries, packed in one float32 buffer;
3. an exclusive prefix combine of the W gathered summaries (the associative operator of the
   recurrence) gives the state entering the shard;
4. the local pass started from the entering state. For linear attention and the SSMs this
   equals the local output from a zero state plus the entering state's contribution
   (``linear_attention_inter``); linear attention runs it as one chunked pass with
   ``initial_state`` (one pass instead of two), Mamba and S4 add the correction explicitly.

Autodiff turns the all-gather into its transpose (a reduce-scatter of the gathered cotangents,
i.e. the paper's backward all-gather + suffix sum). The gathered summaries are W times a state
([W, B, H, dk, dv] per layer); they are what autodiff saves for the backward pass, independent
of L, so no ``custom_vjp`` is used.

Mixers:

- :func:`lasp2_linear_attention`: linear attention without decay, with per-head [B, L, H] or
  per-key-channel [B, L, H, dk] log decay, causal or bidirectional. Gathered:
  ``[W, B, H, dk·dv + (0 | 1 | dk)]``.
- :func:`lasp2_lightnet_attention`: LightNet; the state is the normalised numerator and the
  log-normaliser (``[W, B, H, dk·dv + dk]``), combined in log space (a masked log-sum-exp).
- :func:`sequence_parallel_selective_scan`: Mamba. A shard's decay is
  ``exp(A ⊙ Σ_t Δ_t)``, so gathering Σ_t Δ_t [B, D] with the final state [B, D, N] suffices
  (``[W, B, D, N + 1]``). The entering state is corrected in closed form,
  ``y_t += ⟨exp(A ⊙ Σ_{s≤t} Δ_s) ⊙ h_in, C_t⟩`` (log space), over chunks of ``chunk_size``
  tokens, rematerialised in the backward pass: extra memory O(B·chunk_size·D·N), never
  [B, L, D, N].
- :func:`sequence_parallel_ssd`: Mamba-2 (SSD). The decay is a scalar per head and step, so a
  shard's decay is ``exp(Σ_t Δ_t A)``; gathered: the final state and that log decay
  (``[W, B, H, P·N + 1]``). The entering state's term ``exp(Σ_{s≤t} Δ_s A) S_in C_t`` is one
  einsum against C.
- :func:`sequence_parallel_s4`: S4D (diagonal, ZOH) and S4 (DPLR, bilinear), the SSM of
  :class:`~jaxdiv.models.S4Block`. Time-invariant, so the decay Ā^{L_shard} is known on every
  shard and only the final states are gathered ([W, B, H, N2, 2], complex as real pairs). Local
  output: the FFT convolution with the kernel truncated to the shard (as ``S4Block``); final
  state and correction ``y_t += 2 Re(C Ā^{t+1} h_in)`` by two-level Vandermonde products
  (O(√L_shard) powers of Ā, never an [H, N2, L] array). The input is never gathered. To run an
  ``S4Block`` with the sequence sharded: ``y = sequence_parallel_s4(x, block._Lambda(), B, C,
  block.log_dt, block.D, P=P)`` with the complex ``B``, ``C``, ``P`` of the block, then GELU
  and ``out_proj`` (position-wise). Causal blocks only (``bidirectional=True`` would need the
  mirrored suffix pass; not implemented).
- :func:`lasp2h_attention`: softmax attention (hybrids): all-gather K and V, local queries
  against all keys with the causal mask offset by the shard index (LASP-2H).

Layouts: [B, L, H, d] (attention) or [B, L, D] (SSMs); batch over the mesh axes ``("data",
"fsdp")`` present, the sequence over ``axis_name``, heads / channels over ``"tensor"`` when the
mesh has it with size > 1. L must be a multiple of W.

The implementations live beside the ops they parallelise (``attention/parallel.py``,
``ssm/parallel.py``); this module is their public home (API.md §4).
"""

from .attention.parallel import lasp2_lightnet_attention as lasp2_lightnet_attention
from .attention.parallel import lasp2_linear_attention as lasp2_linear_attention
from .attention.parallel import lasp2h_attention as lasp2h_attention
from .sharding import sequence_mesh as sequence_mesh
from .ssm.parallel import sequence_parallel_s4 as sequence_parallel_s4
from .ssm.parallel import sequence_parallel_selective_scan as sequence_parallel_selective_scan
from .ssm.parallel import sequence_parallel_ssd as sequence_parallel_ssd

__all__ = (
    "lasp2_lightnet_attention",
    "lasp2_linear_attention",
    "lasp2h_attention",
    "sequence_mesh",
    "sequence_parallel_s4",
    "sequence_parallel_selective_scan",
    "sequence_parallel_ssd",
)
