"""jaxdiv.models: sequence-model ops (pure functions) and Flax NNX modules.

S4 (S4D and DPLR), Mamba, LightNet, linear and softmax attention; see API.md §3.
"""
