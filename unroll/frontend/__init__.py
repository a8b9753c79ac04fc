"""The front end: scheme text, SymPy equations and YAML scheme files become a `Scheme`.

- `parse`: the scheme language (a hand-written tokenizer and parser that builds SymPy);
- `scheme`: `Scheme`, the frozen, validated value every later pass reads;
- `library`: `compile`, `load` and the bundled scheme files;
- `printing`: a scheme back as scheme text (which parses back equal) and as LaTeX.
"""
