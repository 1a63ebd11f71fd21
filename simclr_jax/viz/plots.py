"""Rendering of the embedding map and the similarity heatmap (matplotlib Agg).

Figures are drawn on a bare `Figure` with the Agg canvas (no pyplot state, no
display needed) at a fixed layout, and returned as uint8 RGB arrays that go
both to PNG files and to TensorBoard.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

# Layout of the rendered figures (fractions of the square figure): fixed, so
# that a heatmap cell's pixel position is known (`heatmap_box`).
DPI = 100
HEATMAP_AXES = (0.06, 0.06, 0.8, 0.8)  # left, bottom, width, height
COLORBAR_AXES = (0.88, 0.06, 0.025, 0.8)
EMBEDDING_AXES = (0.05, 0.05, 0.75, 0.88)
MAX_LEGEND_CLASSES = 20  # beyond this a legend is unreadable


def _figure(px: int):
  # A bare Figure with the Agg canvas: no pyplot global state, no display.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(px / DPI, px / DPI), dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def _pixels(fig) -> np.ndarray:
  fig.canvas.draw()
  return np.array(fig.canvas.buffer_rgba())[..., :3]


def _color(k: int, num_classes: int):
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  if num_classes <= 10:
    return colormaps["tab10"](k)
  if num_classes <= 20:
    return colormaps["tab20"](k)
  return colormaps["hsv"](k / num_classes)


def plot_embedding(coords: np.ndarray, labels: Optional[np.ndarray],
                   title: str, px: int) -> np.ndarray:
  """Scatter plot of 2-D points coloured by label, with a legend.

  Args:
    coords: float [n, 2].
    labels: int [n]; None for unlabelled points (one colour, no legend).
    title: figure title.
    px: side of the square image.

  Returns:
    uint8 [px, px, 3].
  """
  fig = _figure(px)
  ax = fig.add_axes(EMBEDDING_AXES)
  classes = [] if labels is None else np.unique(labels)
  if labels is None:
    ax.scatter(coords[:, 0], coords[:, 1], s=8, linewidths=0,
               color=_color(0, 1))
  for k, c in enumerate(classes):
    sel = labels == c
    ax.scatter(coords[sel, 0], coords[sel, 1], s=8, linewidths=0,
               color=_color(k, len(classes)), label=str(c))
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=10)
  if 0 < len(classes) <= MAX_LEGEND_CLASSES:
    fig.legend(loc="center left", bbox_to_anchor=(0.81, 0.5), title="label",
               markerscale=2, fontsize=8, frameon=False)
  return _pixels(fig)


def heatmap_box(px: int) -> Tuple[float, float, float, float]:
  """(left, top, width, height) in pixels of the heatmap matrix in its image."""
  left, bottom, width, height = HEATMAP_AXES
  return (left * px, (1 - bottom - height) * px, width * px, height * px)


def plot_similarity(sim: np.ndarray, num_views: int, title: str,
                    px: int) -> np.ndarray:
  """The similarity matrix as an image in [-1, 1] (viridis: brighter = higher).

  Args:
    sim: float [V*N, V*N] from `similarity_matrix`.
    num_views: V, for the view labels on the axes.
    title: figure title.
    px: side of the square image.

  Returns:
    uint8 [px, px, 3]; the matrix fills `heatmap_box(px)`.
  """
  fig = _figure(px)
  ax = fig.add_axes(HEATMAP_AXES)
  image = ax.imshow(sim, cmap="viridis", vmin=-1.0, vmax=1.0,
                    interpolation="nearest", aspect="auto")
  n = len(sim) // num_views
  centres = [(v + 0.5) * n - 0.5 for v in range(num_views)]
  names = [f"view {v + 1}" for v in range(num_views)]
  ax.set_xticks(centres, names, fontsize=8)
  ax.set_yticks(centres, names, fontsize=8, rotation=90, va="center")
  ax.tick_params(length=0)
  ax.set_title(title, fontsize=10)
  bar = fig.colorbar(image, cax=fig.add_axes(COLORBAR_AXES))
  bar.ax.tick_params(labelsize=8)
  return _pixels(fig)


def plot_neighbours(query: np.ndarray, neighbours: Sequence[np.ndarray],
                    query_title: str, titles: Sequence[str], tile_px: int,
                    columns: int) -> np.ndarray:
  """A grid: the query image first, then its neighbours with their captions.

  Args:
    query: the query image, uint8 or float [H, W, 3] (any size).
    neighbours: the neighbour images, nearest first.
    query_title: caption of the query tile.
    titles: caption of each neighbour (e.g. rank and cosine).
    tile_px: side of one tile, pixels.
    columns: tiles per row.

  Returns:
    uint8 [rows * tile, columns * tile, 3].
  """
  images = [query] + list(neighbours)
  captions = [query_title] + list(titles)
  columns = max(1, min(columns, len(images)))
  rows = -(-len(images) // columns)
  fig = _figure(tile_px)
  fig.set_size_inches(columns * tile_px / DPI, rows * tile_px / DPI)
  for i, (image, caption) in enumerate(zip(images, captions)):
    ax = fig.add_subplot(rows, columns, i + 1)
    ax.imshow(np.asarray(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():  # the query framed in red
      spine.set_color("red" if i == 0 else "black")
      spine.set_linewidth(3 if i == 0 else 0.5)
    ax.set_title(caption, fontsize=8)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92,
                      wspace=0.05, hspace=0.25)
  return _pixels(fig)
