"""jaxdiv: divergences and distillation objectives in JAX."""
