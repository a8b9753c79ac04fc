"""Transformations of trained networks and the experiments behind them: neuron splitting
(`splitting`), deep to parallel (`parallel`), and the scikit-learn digits harness (`digits`)."""
