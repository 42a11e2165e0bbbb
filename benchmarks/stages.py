"""The documented ``python benchmarks/stages.py``: runs timings/stages.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("stages")
