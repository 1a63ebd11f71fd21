"""Command-line tools (export, evaluate, convert, benchmark, visualize, preview).

The library never imports this package; each tool is reached through its
short command, `python -m simclr_jax.<tool>`.
"""
