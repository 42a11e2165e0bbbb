"""Detection quality and its diagnostics: cifar10_quality, shortcuts, neighbour_pool."""
