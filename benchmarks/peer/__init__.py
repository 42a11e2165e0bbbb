"""The PyTorch peer of throughput --torch: the authors' encoder step (torch is optional)."""
