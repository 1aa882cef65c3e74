"""Search strategies: one-shot supernets and multi-trial drivers."""
