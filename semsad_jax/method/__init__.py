"""The SemSAD mathematics as pure functions on arrays (no file I/O).

losses (InfoNCE / NT-Xent, the gamma-weighted pair objective), neighbours (exact top-k cosine on the
device), pairs (positive / negative pair sampling), features (inference-mode embeddings in padded,
sharded batches), scoring (pair scores s(reference, partner)), knn (the kNN accuracy monitor) and
metrics (OOD metrics, numpy).
"""
