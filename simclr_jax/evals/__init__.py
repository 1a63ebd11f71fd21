"""Evaluators: objects with one `run(variables, step)` that the loop calls.

`registry` names them in one vocabulary for every mode (`eval.evaluators`)
and builds them; each declares its hooks and the config sections it reads
(`base.Evaluator`). The training loop calls them at the evaluation cadence
(those with `periodic`) and at the end, and files their results under their
`name`.
"""
