"""Default configuration: every field the program reads, with its meaning.

The dataset configs import this one and change only what differs. Run with
  python -m simclr_jax.main --config=configs/default.py --workdir=runs/default
(which pretrains on the offline digits data with the CIFAR-size recipe).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Returns the default (digits-sized, CIFAR-style) configuration."""
  config = ml_collections.ConfigDict()
  config.mode = "pretrain"  # pretrain | linear_eval | finetune | distill
  config.seed = 0  # parameter init, data order and augmentation randomness

  config.data = data = ml_collections.ConfigDict()
  data.source = "digits"  # digits | tfds | folder | synthetic (JAX-made, no files, no TensorFlow)
  data.name = ""  # TFDS builder name when source == 'tfds' (e.g. 'cifar10')
  data.data_dir = ""  # TFDS data_dir, or the image-folder root; '' = TFDS default
  data.train_split = "train"  # split used for training
  data.eval_split = "test"  # split used for evaluation
  data.image_key = "image"  # TFDS feature holding the image
  data.label_key = "label"  # TFDS feature holding the class label
  data.image_size = 32  # side of the (square) network input, pixels
  data.shuffle_buffer = 10_000  # examples in the tf.data shuffle buffer
  data.cache = True  # cache decoded images in memory (small datasets only)
  data.digits_test_fraction = 0.2  # digits: stratified held-out fraction
  data.digits_split_seed = 0  # digits: seed of the fixed train/test split
  data.skip_corrupt = False  # folder: skip (and count) unreadable images instead of failing
  data.folder_labels = "auto"  # folder: auto (class sub-folders detected) | subfolders | none (unlabelled tree)
  data.holdout_fraction = 0.1  # folder without an eval_split folder: fraction of train held out for eval (0 = no eval)
  data.holdout_seed = 0  # folder: seed of the held-out images
  data.fit_sizes = False  # lower batch, kNN k and picture sizes that exceed a small dataset (with a log line)
  data.fast_jpeg = False  # JPEG sources: decode only each view's crop window, cheap blur (same distribution)
  data.fast_jpeg_dct = False  # fast_jpeg / on_device: decode windows whose crops are >= 2, 4, 8x the output side at that fraction (DCT-scaled; close to, not equal to, the reference)
  # The synthetic source (benchmarks, debugging): example i has label i mod C and
  # a smooth random colour pattern of its class plus noise; views add noise.
  data.synthetic_train_examples = 50_000  # synthetic: examples of train_split (sets the epoch)
  data.synthetic_eval_examples = 10_000  # synthetic: examples of eval_split
  data.synthetic_num_classes = 10  # synthetic: classes C
  data.synthetic_grid = 4  # synthetic: class pattern = grid x grid random colours, resized
  data.synthetic_noise = 0.1  # synthetic: std of the per-example and per-view noise
  data.synthetic_seed = 0  # synthetic: seed of the patterns and noise (the dataset itself)

  config.aug = aug = ml_collections.ConfigDict()
  aug.num_views = 2  # augmented views per image (2 = SimCLR)
  # Each op on/off on its own (SimCLR Figure 5); off = skipped whatever its probability.
  aug.crop = True  # random-resized crop (off: the central square, resized)
  aug.flip = True  # horizontal flip with flip_prob
  aug.color_jitter = True  # colour jitter with color_prob
  aug.grayscale = True  # grayscale with grayscale_prob
  aug.crop_area_min = 0.08  # random-resized-crop area range (fraction)
  aug.crop_area_max = 1.0
  aug.aspect_min = 3 / 4  # random-resized-crop aspect-ratio range
  aug.aspect_max = 4 / 3
  aug.flip_prob = 0.5  # horizontal flip probability
  aug.color_strength = 0.5  # colour-jitter strength s (1.0 ImageNet, 0.5 CIFAR)
  aug.color_prob = 0.8  # probability of applying colour jitter
  aug.grayscale_prob = 0.2  # probability of converting to grayscale
  aug.blur = False  # Gaussian blur (on for ImageNet-size images)
  aug.blur_prob = 0.5  # probability of blurring a view
  aug.blur_sigma_min = 0.1  # blur sigma range, pixels
  aug.blur_sigma_max = 2.0
  aug.blur_kernel_frac = 0.1  # blur kernel side as a fraction of the image side
  aug.on_device = False  # pretraining: host only crops; flip/colour/grayscale/blur run in the train step
  aug.on_device_on_accelerators = False  # pretraining on a GPU/TPU backend: set aug.on_device (logged; CPU keeps the host path)
  aug.eval_crop_proportion = 1.0  # centre-crop fraction at eval (0.875 ImageNet)

  config.model = model = ml_collections.ConfigDict()
  model.depth = 18  # ResNet depth: 18, 34, 50, 101, 152, 200
  model.width = 1  # width multiplier
  model.sk_ratio = 0.0  # selective-kernel ratio (SimCLR v2 uses 0.0625)
  model.stage_sizes = config_dict.placeholder(tuple)  # blocks per stage, overriding depth's (tiny runs)
  model.base_widths = config_dict.placeholder(tuple)  # channels of the 4 stages at width 1 (64,128,256,512)
  model.stem = "auto"  # cifar | imagenet | auto (cifar below auto_stem_max_size)
  model.auto_stem_max_size = 64  # largest image side that gets the CIFAR stem
  model.bn_momentum = 0.9  # BatchNorm moving-average decay
  model.bn_epsilon = 1e-5  # BatchNorm epsilon
  model.proj_head = "nonlinear"  # nonlinear (head_layers layers) | linear (one Dense+BN) | none (z = h)
  model.head_layers = 2  # projection-head layers (2 = v1, 3 = v2)
  model.head_hidden_dim = 0  # hidden width of the head (0 = width of h)
  model.proj_dim = 128  # output dimension of z
  model.sup_head_from = 0  # supervised head input: 0 = h, k = head layer k
  model.dtype = "float32"  # compute dtype: float32 | bfloat16

  config.loss = loss = ml_collections.ConfigDict()
  loss.name = "nt_xent"  # nt_xent | supcon | nt_logistic | margin_triplet
  loss.temperature = 0.5  # softmax temperature tau
  loss.supcon_variant = "out"  # supcon: out (L_out) | in (L_in)
  loss.margin = 0.5  # margin_triplet: margin m
  loss.official_scale = False  # x V views: the official TF2 mean(loss_a + loss_b) = 2x the paper's L
  loss.base_temperature = 0.0  # supcon: x temperature / base_temperature (SupContrast: 0.07); 0 = off

  config.optim = optim = ml_collections.ConfigDict()
  optim.name = "lars"  # lars | sgd | adamw | lamb
  optim.base_lr = 1.0  # base learning rate before batch scaling
  optim.lr_scaling = "linear"  # linear (x B/256) | sqrt (x sqrt(B)) | none
  optim.weight_decay = 1e-6  # on kernels only (not BN, biases, probe head)
  optim.decay_sup_head = False  # also decay the probe/supervised head kernel (official; no LARS scaling)
  optim.momentum = 0.9  # LARS / SGD momentum
  optim.trust_coefficient = 0.001  # LARS eta
  optim.nesterov = True  # SGD: Nesterov momentum
  optim.b1 = 0.9  # AdamW / LAMB betas and epsilon
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.warmup_epochs = 10  # linear warm-up length, epochs

  config.train = train = ml_collections.ConfigDict()
  train.global_batch = 512  # images per step over all devices (views x V)
  train.epochs = 100  # training length in epochs ...
  train.steps = 0  # ... or in steps when > 0 (overrides epochs)
  train.probe = True  # online linear probe on stop_gradient(h)
  train.grad_chunks = 1  # gradient caching: chunks per device batch (1 = off; BN statistics per chunk)
  train.log_every_steps = 50  # console / TensorBoard metrics interval
  train.first_eta_steps = 5  # the first ETA after this many timed steps ...
  train.first_eta_seconds = 30.0  # ... or seconds after the compile, whichever is first
  train.cpu_eta_warning_hours = 2.0  # on a CPU, a longer ETA logs how to shorten the run
  train.cpu_variant = ""  # the config that warning suggests (e.g. 'configs/folder.py:cpu'; '' = none)
  train.max_steps_in_flight = 2  # steps dispatched ahead of the device: a stop signal acts within this many steps plus the save
  train.checkpoint_every_steps = 500  # checkpoint interval (always at the end)
  train.keep_checkpoints = 3  # checkpoints kept in the workdir
  train.eval_every_steps = 0  # online evaluation interval (0 = only at end)
  train.start_over = False  # move aside workdir checkpoints of a different model and start at step 0
  train.allow_config_change = False  # resume although hyper-parameters differ from the checkpoints' config

  config.distill = distill = ml_collections.ConfigDict()
  distill.teacher_export = ""  # mode distill: export dir of the frozen teacher (needs a classifier head)
  distill.temperature = 1.0  # softening temperature of the teacher and student distributions
  distill.label_weight = 0.0  # weight of the labelled cross-entropy added (0 = unlabelled only)

  config.eval = ev = ml_collections.ConfigDict()
  # The evaluators of the run, one vocabulary for every mode: classifier (the
  # mode's trained head: online probe, linear head, fine-tuned model, student),
  # teacher (distill), knn, fast_probe, signals (held-out, no labels needed),
  # pictures (viz.*). ("auto",) = the mode's defaults: pretrain classifier, knn,
  # pictures (signals instead on unlabelled data); linear_eval classifier,
  # fast_probe, knn; finetune classifier; distill classifier, teacher.
  ev.evaluators = ("auto",)
  ev.batch_size = 256  # global batch of the evaluation passes
  ev.knn_k = 200  # kNN monitor: neighbours
  ev.knn_temperature = 0.1  # kNN monitor: similarity temperature
  ev.knn_query_chunk = 256  # kNN: queries scored against the memory bank at once
  ev.signal_max_images = 1024  # held-out signals: images (pairs) used at most
  ev.label_fraction = 1.0  # linear_eval/finetune: labelled fraction of train, in (0, 1]
  ev.label_seed = 0  # seed of the class-balanced labelled subset
  ev.raw_pixels = False  # fast probe / kNN on flattened pixels instead of h
  ev.probe_val_fraction = 0.2  # fast probe: held-out fraction of the labelled set
  ev.probe_l2_grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # fast probe: L2 strengths tried
  ev.probe_max_iters = 500  # fast probe: L-BFGS iteration cap
  ev.probe_tol = 1e-5  # fast probe: stop when the gradient norm is below this
  ev.probe_standardize = True  # fast probe: standardise features (train mean/std)

  # Where linear_eval / finetune get their encoder (exactly one is required).
  config.init = init = ml_collections.ConfigDict()
  init.export = ""  # an export directory (python -m simclr_jax.export / convert)
  init.checkpoint_dir = ""  # a pretraining workdir (its newest checkpoint) ...
  init.checkpoint_step = 0  # ... or this step of it (0 = newest)
  init.random = False  # a randomly initialised config.model (baseline)

  # Semi-supervised fine-tuning (SimCLR v2): all layers, from a head layer.
  config.finetune = ft = ml_collections.ConfigDict()
  ft.head_from = 1  # fine-tune from projection-head layer k (0 = drop the head)

  # Multi-host runs; where each process connects is given by flags (see main.py).
  config.distributed = dist = ml_collections.ConfigDict()
  dist.initialization_timeout_s = 300  # wait this long for all processes to join
  dist.heartbeat_timeout_s = 100  # a silent process is declared dead after this
  dist.log_all_processes = False  # INFO logs from every process, not only process 0
  config.viz = viz = ml_collections.ConfigDict()
  viz.preview_images = 8  # rows (source images) of the augmentation preview grid
  viz.preview_views = 6  # augmented views per row of the preview
  viz.preview_tile_px = 64  # preview tiles are upscaled (nearest) to at least this side
  viz.embedding_method = "auto"  # auto (UMAP if installed, else t-SNE) | tsne | umap
  viz.tsne_points = 1000  # eval-split examples placed on the embedding map
  viz.tsne_perplexity = 30.0  # t-SNE perplexity (UMAP: n_neighbors, rounded)
  viz.tsne_threads = 1  # OpenMP threads of t-SNE/UMAP (0 = all cores; more slow a busy host)
  viz.heatmap_batch = 32  # images N of the similarity heatmap (2N x 2N cells for 2 views)
  viz.figure_px = 640  # side of the embedding-map and heatmap PNGs, pixels
  return config
