"""Lowerings of a step: eager PyTorch (`eager`), torch modules (`nn`), Triton (`triton`), and
the content-addressed cache of generated source (`cache`)."""
