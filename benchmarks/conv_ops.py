"""The documented ``python benchmarks/conv_ops.py``: runs timings/conv_ops.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("conv_ops")
