"""Pure-torch compression algorithms (no Lightning import): pruning, quantization, low-rank, distillation."""
