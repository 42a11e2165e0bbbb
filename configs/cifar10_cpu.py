"""CIFAR-10, all ten classes in distribution, CPU-sized: the shipped detector ``cifar10_cpu``.

    python main.py --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu --mode=all

The recipe is the quality benchmark's cpu budget, chosen on its validation protocols
(``benchmarks/cifar10_quality.py``, docs/results.md "Report run"): 16 px images, width-16
ResNet-18s; encoder 30 epochs at batch 256, Adam 1e-3, the authors' tau 0.5 with the paper's
views; discriminator 8 epochs at batch 128, AMSGrad 2e-4 (x0.2 after epoch 4, x0.1 after 7), a
half of the negatives shifted copies of the image itself. Trained on 10,000 images of the
training split (a fixed random subset of all ten classes; the bank ships inside the detector);
evaluated on the whole test split against the far-OOD suite's report halves (500 images a set).
The card with its numbers: pretrained/cifar10_cpu.md.
"""

from semsad_jax.configs import default, far_ood
from semsad_jax.configs.cifar10_shared import ARCHIVE


def get_config():
    c = default.get_config()
    c.data.train = f"archive:{ARCHIVE}!train?limit=10000"
    c.data.test = f"archive:{ARCHIVE}!test"
    c.data.image_size = 16
    e = c.encoder
    e.depth, e.width, e.batch_size, e.epochs = 18, 16, 256, 30
    e.learning_rate, e.temperature = 1e-3, 0.5
    e.checkpoint_every_steps, e.log_every_steps, e.knn_k = 500, 50, 20
    s = c.discriminator
    s.depth, s.width, s.batch_size, s.epochs = 18, 16, 128, 8
    s.learning_rate, s.lr_boundaries, s.lr_scales = 2e-4, (4, 7), (0.2, 0.1)
    s.shifted_negatives = 0.5
    s.checkpoint_every_steps, s.log_every_steps, s.feature_batch_size = 500, 50, 512
    for name, spec in far_ood.specs(500, part="fit").items():  # the report halves
        c.eval.ood[name] = spec
    return c
