"""Transformations of trained networks and the experiments behind them: neuron splitting
(`splitting`), deep to parallel (`parallel`), and the experiments of ``unroll experiment``
(`catalogue`: `momentum`, `multistep`, `orders`, `growing`, `deep_parallel`), which share
`harness` (data, training, statistics, stored results, docs/experiments.md) and `digits`."""
