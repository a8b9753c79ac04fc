"""``python -m unroll.cli``: the same as the ``unroll`` command."""

from unroll.cli import main

main()
