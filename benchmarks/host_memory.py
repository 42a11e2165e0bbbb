"""The documented ``python benchmarks/host_memory.py``: runs timings/host_memory.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("host_memory")
