"""The intermediate representation: what one step of a scheme is, resolved once.

- `vocabulary`: the SymPy pieces every pass shares (state values, stages, operators);
- `activations`: the activations φ by name, as SymPy expressions and torch callables;
- `layer_form`: an optimizer scheme rewritten as a network layer (Scheme -> Scheme).
"""
