"""The documented ``python benchmarks/encoder_recipes.py``: runs experiments/encoder_recipes.py."""

if __name__ == "__main__":
    import importlib

    shim = importlib.import_module(f"{__package__}._shim" if __package__ else "_shim")
    shim.run("encoder_recipes")
