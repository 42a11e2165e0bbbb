"""The documented ``python benchmarks/cifar10_quality.py``: runs experiments/cifar10_quality.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("cifar10_quality")
