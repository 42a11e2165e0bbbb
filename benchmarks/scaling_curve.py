"""The documented ``python benchmarks/scaling_curve.py``: runs experiments/scaling_curve.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("scaling_curve")
