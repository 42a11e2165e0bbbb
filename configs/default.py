"""Default semsad-jax configuration: every field, documented.

Other configs start from ``get_config()`` here and change a few fields. Any field can be overridden
on the command line, e.g. ``--config.encoder.epochs=3 --config.data.image_size=16``.

Where the SemSAD paper and the authors' code differ, the default follows the paper and the comment
names the authors' value (see README, "Paper vs authors' code vs our defaults").
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds parameters, data order and every augmentation key (fold_in(seed, step)).
    c.dtype = "float32"  # Compute dtype of the convnets: "float32" or "bfloat16" (GPU/TPU).

    # ---- data -------------------------------------------------------------------------------
    c.data = d = ml_collections.ConfigDict()
    # Source spec strings (see README "Data sources"): tfds:NAME/SPLIT, folder:PATH,
    # archive:PATH!SUBDIR, npz:PATH, sklearn:digits[/train|/test]; query suffixes ?classes=a,b
    # &exclude=c &limit=N &seed=S. Labels are never used for training.
    d.train = "sklearn:digits/train"
    d.test = "sklearn:digits/test"
    d.image_size = 32  # Every source is resized to image_size x image_size x 3 (uint8).
    d.cache_dir = ""  # Decoded-data cache; "" = $SEMSAD_CACHE or ~/.cache/semsad_jax; "none" = off.
    d.on_corrupt = (
        "skip"  # Unreadable images in folder/archive sources: "skip" (count logged) or "error".
    )
    # Contaminated training (UFDGAN-style protocol): mix this fraction of images from
    # data.contamination_source into the training set ("" = no contamination).
    d.contamination_source = ""
    d.contamination = 0.0
    # Where the uint8 training set lives while a stage trains (never changes the results):
    # "device" (copied to every device once; fastest), "host" (stays in host memory, or
    # memory-mapped from the decoded-data cache: only each step's batch rows travel to the devices,
    # the next batch prefetched while a step runs; for sets bigger than device memory or RAM), or
    # "auto" (device while the set takes at most 25% of the smallest device's memory, else host).
    d.placement = "auto"

    # ---- encoder h (contrastive) -------------------------------------------------------------
    c.encoder = e = ml_collections.ConfigDict()
    # architecture
    # 18 or 34 (CIFAR ResNet: 3x3 stem, stride 1, no max-pool); 10 = one block per stage (an extension).
    e.depth = 18
    # 1 = the CIFAR stem; 2 (an extension for CPUs): a stride-2 stem, so 32 px images cost what
    # 16 px ones do (the stages see 16 x 16 maps).
    e.stem_stride = 1
    e.width = 64  # Channels of the first stage (64 = standard ResNet).
    e.norm = "batch"  # "batch" or "group".
    e.head = "mlp"  # "mlp" (paper: MLP head to out_dim) or "linear" (authors' code: 512 -> 128).
    e.out_dim = 128
    # How convolutions run, never what they compute (checkpoints are shared): "auto" (patches @
    # kernel where XLA:CPU's convolution is slow, see models.use_matmul_conv), "xla" or "matmul".
    e.conv_impl = "auto"
    # loss
    e.loss = "infonce"  # "infonce" (authors': view1 rows vs view2 columns) or "ntxent" (symmetric).
    e.temperature = 1.0  # Paper: 1.0; authors' code: 0.5.
    # Extension after CSI (Tack et al. 2020; False = the paper): every image's four rotations are
    # distinct instances (so a rotated copy is a negative, a "shifted instance") and an auxiliary
    # linear head on the pooled features predicts the rotation, its cross-entropy weighted by
    # shift_head_weight. Each step then reads 4 x batch_size instances (8 x batch_size views).
    e.shifted_instances = False
    e.shift_head_weight = 1.0
    # augmentation
    e.augment = "encoder"  # Augmentation preset for the two views (see semsad_jax.augment.PRESETS).
    # optimiser
    e.batch_size = 2048  # Global batch (split over all devices and hosts).
    e.epochs = 1500
    e.optimizer = "adam"  # "adam", "adamw", "amsgrad" or "sgd" (momentum 0.9).
    e.learning_rate = 3e-4
    e.weight_decay = 1e-6  # Coupled L2 (added to the gradient) for adam/sgd; decoupled for adamw.
    e.schedule = "constant"  # "constant" (paper and code), "cosine", or "piecewise" (see below).
    e.warmup_epochs = 0
    e.lr_boundaries = ()  # Epochs at which piecewise schedule multiplies lr by lr_scales[i].
    e.lr_scales = ()
    # loop cadence
    e.checkpoint_every_steps = 500
    e.keep_checkpoints = 3
    e.log_every_steps = 20
    # monitors
    e.knn_every_epochs = 0  # kNN monitor every M epochs during training (0 = only at the end).
    e.knn_k = 200
    e.knn_temperature = 0.1

    # ---- discriminator s (pair classifier) ---------------------------------------------------
    c.discriminator = s = ml_collections.ConfigDict()
    # architecture
    s.depth = 34  # Paper: 18/34; authors' code: 34.
    s.width = 64
    s.activation = "elu"
    s.norm = (
        "batch"  # "batch" (running stats at inference), "group", "batch_transductive" (authors').
    )
    s.out_dim = 1  # Paper: 1; authors' code: 64 logits (loss averaged over them, score = sum).
    s.head = "mlp"  # Paper App. D.2: "the projecting head maps to a scalar value" (MLP, ELU); authors: "linear".
    s.conv_impl = "auto"  # As encoder.conv_impl.
    # Extension ("pair" = the paper's 6-channel ResNet): "siamese" = one 3-channel trunk shared by
    # both images, head on [f, f', |f - f'|, f * f'] (semsad_jax.models.siamese); with
    # init_from_encoder its trunk starts as the trained encoder's, its updates x trunk_lr_scale.
    s.arch = "pair"
    s.init_from_encoder = False
    s.trunk_lr_scale = 1.0
    # loss and pairs
    s.neighbours = 4  # k of the semantic neighbourhood S(x).
    # S(x) = the k nearest by h among neighbour_pool random training images (paper App. D.2 and
    # Table 3: 10k); 0 = among the whole training set. Sets of at most neighbour_pool images: the same.
    s.neighbour_pool = 10000
    # "encoder" (SemSAD: nearest by h) or "labels" (DIAGNOSTIC ONLY, uses labels: k random images of
    # the same class; results.json then says "label_free": false).
    s.neighbourhood = "encoder"
    s.mu = 1.0 / 32  # Fraction of positive pairs replaced by (x, member of S(x)).
    s.pairs = "paper"  # "paper" or "authors" pair-sampling variant (see semsad_jax.method.pairs).
    # Extension (0 = the paper): this fraction of negatives pairs x with a rotated / quadrant-
    # permuted copy of itself, so "same low-level statistics" stops being a cue for "positive".
    s.shifted_negatives = 0.0
    # Which shifted copy (semsad_jax.method.pairs.SHIFT_KINDS): "rotate_or_quadrants", "rotation",
    # "patch4" / "patch16" (2x2 / 4x4 patches permuted) or "pixels" (only the colour histogram kept).
    s.shifted_kind = "rotate_or_quadrants"
    # Extension (False = the paper): positives and negatives draw their view strength (plain,
    # t_pos, t_neg) from one mixture, so augmentation strength is no cue (semsad_jax.method.pairs).
    s.matched_views = False
    s.gamma = "uniform"  # "uniform" (paper: U(1, 10)) or "integer" (authors': 1..9).
    s.gamma_max = 10.0
    # augmentation
    # Ablation (False = the paper, App. D): neighbour pairs through pos_augment too.
    s.neighbour_augment = False
    s.pos_augment = "t_pos"
    s.neg_augment = "t_neg"
    # optimiser
    s.batch_size = 128
    s.epochs = 701
    s.steps_per_epoch = 0  # 0 = len(train) // batch_size; the authors' loader gives 5 on CIFAR.
    s.learning_rate = 5e-5
    s.weight_decay = 1e-6
    s.optimizer = "amsgrad"
    s.schedule = (
        "piecewise"  # As encoder.schedule; the paper's steps are lr_boundaries / lr_scales.
    )
    s.warmup_epochs = 0
    s.lr_boundaries = (200, 500)  # Epochs. Paper: x0.2 after 200, x0.1 after 500.
    s.lr_scales = (0.2, 0.1)  # Authors' code: (0.2, 0.05) i.e. x0.01 overall from epoch 500.
    # loop cadence
    s.checkpoint_every_steps = 500
    s.keep_checkpoints = 3
    s.log_every_steps = 20
    # feature bank (inference)
    s.feature_batch_size = 1024  # Batch for feature-bank building (inference).

    # ---- rotation prediction (a second label-free detector, off in the paper's configs) -----------
    # Hendrycks et al. 2019 / GEOM (Golan & El-Yaniv 2018): a ResNet learns which transformation
    # was applied to a training image; the "rotation" detector scores an image by the mean
    # log-probability of the true transformation over its transformed copies. Trained by
    # --mode=rotation (and --mode=all) when enabled; scored by --mode=eval beside SemSAD.
    c.rotation = r = ml_collections.ConfigDict()
    r.enabled = False
    # "rotate" (0/90/180/270 degrees), "rotate_flip" (x mirror: 8) or "geom" (GEOM's 72: mirror x
    # 3 x 3 shifts by a quarter side x 4 rotations); semsad_jax.method.transforms.
    r.transforms = "rotate"
    r.depth = 18  # ResNet (as encoder.depth), 3x3 stride-1 stem, ReLU, linear head.
    r.width = 64
    r.norm = "batch"
    r.conv_impl = "auto"  # As encoder.conv_impl.
    r.augment = "flip_crop"  # Augmentation of each image before it is transformed (a preset).
    r.batch_size = 128  # Images per step; each is fed in all its transformations.
    r.epochs = 100
    r.optimizer = "adam"
    r.learning_rate = 1e-3
    r.weight_decay = 5e-4
    r.schedule = "cosine"
    r.warmup_epochs = 0
    r.lr_boundaries = ()
    r.lr_scales = ()
    r.checkpoint_every_steps = 500
    r.keep_checkpoints = 3
    r.log_every_steps = 20

    # ---- evaluation ------------------------------------------------------------------------
    c.eval = v = ml_collections.ConfigDict()
    v.in_distribution = ""  # Spec of the in-distribution test set; "" = data.test.
    v.ood = ml_collections.ConfigDict()  # name -> spec, e.g. v.ood.svhn = "tfds:svhn_cropped/test".
    v.batch_size = 500
    v.knn_k = 1  # k of the knn and pixels_knn detectors (similarity to the k-th nearest).
    # Features of the knn / mahalanobis baselines: "penultimate" (pooled backbone features, as SSD
    # and KNN of Sun et al. use) or "head" (the 128-d projection h).
    v.baseline_features = "penultimate"
    # SemSAD score s(nn, x) with nn the nearest training image by h (paper); m > 1 averages s over
    # the m nearest (an extension).
    v.score_neighbours = 1
    v.pixels_centre = False  # pixels_knn floor: subtract the mean training image first.
    # mahalanobis baseline (SSD without labels) on the L2-normalised h features of the bank:
    v.mahalanobis_clusters = 1  # 1 = one Gaussian; > 1 = k-means clusters, distance to the nearest.
    v.mahalanobis_shrinkage = 0.0  # Covariance (1-a) S + a tr(S)/D I before the pinv; 0 = SSD's.
    # The "combined" detector (an extension): each image's score is the lowest of its percentiles
    # under these detectors, each percentile taken among the training bank's own scores (knn and
    # pixels_knn leave the image itself out); "" = no combined detector. E.g. a semantic and a
    # low-level detector: "mahalanobis,pixels_knn".
    v.combined = "mahalanobis,pixels_knn"
    v.combined_reference = 2000  # Bank images whose scores are the percentiles' reference.
    v.tpr = 0.95  # Threshold keeps this fraction of in-distribution test images.
    v.plots = True  # PNG score histograms (paper's Figure 4 style) and ROC curves in WORKDIR/eval.
    v.plot_pairs = 512  # Training positive / negative pairs scored for the histogram (0 = none).
    v.report_dir = ""  # --mode=report output; "" = <common parent of --workdirs>/report.

    # ---- run ------------------------------------------------------------------------------
    c.progress = True  # Progress bar on stderr.
    c.tensorboard = False  # Also write TensorBoard summaries (needs tensorflow).
    return c
