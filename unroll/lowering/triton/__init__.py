"""Code generation: SymPy block updates -> Triton kernel modules.

- `block`: the block-update IR of a scheme (inputs, outputs, coefficients, operator calls);
- `triton_printer`: SymPy -> Triton expressions (printer subclass + mapping table);
- `emit`: the kernel module (forward and symbolically derived backward kernels) and its writing.
"""
