"""The paper's CIFAR-10 setting on TFDS (downloads CIFAR-10 and SVHN on first use).

    python main.py --config=configs/cifar10.py --workdir=runs/c10 --mode=encoder
    python main.py --config=configs/cifar10.py --workdir=runs/c10 --mode=discriminator
    python main.py --config=configs/cifar10.py --workdir=runs/c10 --mode=eval

Paper: encoder 1500 epochs at batch 2048 (Adam 3e-4, wd 1e-6, tau 1, MLP head), discriminator ResNet34 ELU,
batch 128, AMSGrad 5e-5, 701 epochs. OOD = the first 10k test images of each OOD set.
For bfloat16 on GPU/TPU add --config.dtype=bfloat16.
"""

from semsad_jax.configs import default, far_ood


def get_config():
    c = default.get_config()
    c.data.train = "tfds:cifar10/train"
    c.data.test = "tfds:cifar10/test"
    c.data.image_size = 32
    c.encoder.checkpoint_every_steps = 1000
    c.discriminator.checkpoint_every_steps = 2000
    c.eval.ood.svhn = "tfds:svhn_cropped/test[:10000]"
    c.eval.ood.cifar100 = "tfds:cifar100/test[:10000]"
    return far_ood.add(c)
