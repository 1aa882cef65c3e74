"""Search-space vocabulary (LayerChoice, InputChoice, ValueChoice) usable inside any nn.Module."""
