"""The documented ``python benchmarks/neighbour_pool.py``: runs experiments/neighbour_pool.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("neighbour_pool")
