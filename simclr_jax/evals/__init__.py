"""Evaluators: objects with one `run(variables, step)` that the loop calls.

Each reads only its own settings; the training loop calls them at the
evaluation cadence (those with `periodic`) and at the end, and files their
results under their `name`.
"""
