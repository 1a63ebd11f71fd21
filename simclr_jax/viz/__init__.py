"""Pictures: the figures the pictures evaluator and the tools draw.

`plots` renders the embedding map and the similarity heatmap with matplotlib
(no TensorFlow); the augmentation preview, which runs the tf.data
augmentation, is `simclr_jax.data.preview`.
"""
