"""Eager PyTorch execution of a scheme (`Scheme.run`)."""
