"""The paper's CIFAR-100 setting on TFDS (downloads CIFAR-100, CIFAR-10 and SVHN on first use).

python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=encoder
python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=discriminator
python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=eval
"""

from semsad_jax.configs import cifar10


def get_config():
    c = cifar10.get_config()
    c.data.train = "tfds:cifar100/train"
    c.data.test = "tfds:cifar100/test"
    del c.eval.ood["cifar100"]
    c.eval.ood.cifar10 = "tfds:cifar10/test[:10000]"
    return c
