"""The evaluator interface the training loop calls."""

from typing import Any, Dict, Optional, Tuple


class Evaluator:
  """Something the loop runs on the model's variables.

  Every hook the loop calls is declared here, with a default that does
  nothing: the loop calls them all, on every evaluator.

  Attributes:
    name: key of its results (in the results JSON) and of its TensorBoard
      scalars (`eval/<name>_top1`, ...).
    periodic: also run every `train.eval_every_steps`, not only at the end.
    sections: the top-level config fields it reads; the registry gives it
      a frozen config holding only these (`registry.sliced`).
  """
  name: str = ""
  periodic: bool = True
  sections: Tuple[str, ...] = ("eval",)

  def start(self, writer: Any, step: int) -> None:
    """Called once before the first step of a run (or of a resumed run),
    on every process; `step` is the step it starts from."""
    del writer, step

  def run(self, variables: Any, step: int, writer: Any = None
          ) -> Optional[Dict[str, Any]]:
    """Evaluates `variables` (replicated) after `step`; call on every process.

    Args:
      variables: the variables the job's `variables(state)` gives.
      step: the training step just finished.
      writer: the run's metric writer, for evaluators that write images.

    Returns:
      A JSON-able result ('top1', 'top5', 'num_examples' for classifiers),
      or None when there is nothing to record.
    """
    raise NotImplementedError


# Result entries that are TensorBoard scalars (classifiers; held-out signals).
SCALARS = ("top1", "top5", "alignment", "uniformity", "contrastive_top1")


def scalars_of(name: str, result: Optional[Dict[str, Any]]) -> Dict[str, float]:
  """The TensorBoard scalars of one evaluator's result: eval/<name>_<metric>."""
  if not result:
    return {}
  return {f"eval/{name}_{k}": float(v) for k, v in result.items()
          if k in SCALARS}
