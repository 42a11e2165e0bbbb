"""Exact top-k cosine nearest neighbours on the device, in bounded memory.

The search is a batched matrix product followed by ``jax.lax.top_k``. Queries are processed in
blocks of ``query_block`` rows (the last block is padded, so one compilation serves every block) and
each block scans the bank in chunks of ``bank_chunk`` rows, keeping a running top-k that is merged
with each chunk's top-k. Peak memory is about ``query_block x bank_chunk`` float32 similarities plus
the bank itself, whatever the bank size (a 1M x 128 bfloat16 bank takes 256 MB).

Similarities are always accumulated in float32; a bfloat16 (or float16) bank is kept in that dtype
and the queries are cast to it for the product. A float32 bank uses full float32 precision (no TF32).
Ties are broken towards the lower bank index. With a ``jax.sharding.Mesh`` that has a ``"data"``
axis, each query block is sharded over that axis and the bank is replicated; the result is the same
as without the mesh.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.mesh import DATA_AXIS, put

__all__ = [
    "l2_normalize",
    "label_neighbourhoods",
    "pooled_neighbourhoods",
    "semantic_neighbourhoods",
    "top_k_cosine",
]


def l2_normalize(x: Any, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """Scale ``x`` to unit L2 norm along ``axis`` (vectors with norm < eps are divided by eps).

    The norm is computed in float32; the result keeps a floating input dtype (bfloat16 stays
    bfloat16), integer inputs become float32.
    """
    x = jnp.asarray(x)
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=axis, keepdims=True))
    return (x32 / jnp.maximum(norm, eps)).astype(out_dtype)


def _bank_dtype(dtype: Any) -> Any:
    """Half-precision banks stay half precision; everything else is searched in float32."""
    if dtype in (jnp.bfloat16, jnp.float16):
        return dtype
    return jnp.float32


@functools.partial(jax.jit, static_argnames=("num_chunks", "chunk", "normalize", "dtype"))
def _prepare_bank(bank, *, num_chunks: int, chunk: int, normalize: bool, dtype) -> jax.Array:
    """[N, D] -> normalised, zero-padded [num_chunks, chunk, D] in ``dtype``."""
    vectors = bank.astype(jnp.float32)
    if normalize:
        vectors = l2_normalize(vectors)
    padding = num_chunks * chunk - vectors.shape[0]
    vectors = jnp.pad(vectors, ((0, padding), (0, 0)))
    return vectors.astype(dtype).reshape(num_chunks, chunk, vectors.shape[1])


@functools.partial(jax.jit, static_argnames=("k", "normalize", "exclude_self", "out_sharding"))
def _block_top_k(
    query_block,
    bank_chunks,
    block_start,
    num_valid,
    *,
    k: int,
    normalize: bool,
    exclude_self: bool,
    out_sharding,
):
    """Top-k of one query block [B, D] against all bank chunks [num_chunks, C, D].

    Returns (similarities float32 [B, k], indices int32 [B, k]) sorted by decreasing similarity.
    Bank rows with global index >= ``num_valid`` (padding) and, with ``exclude_self``, the row whose
    global index equals the query's global index (``block_start + row``) are masked with -inf.
    """
    compute_dtype = bank_chunks.dtype
    queries = query_block.astype(jnp.float32)
    if normalize:
        queries = l2_normalize(queries)
    queries = queries.astype(compute_dtype)
    num_chunks, chunk, _ = bank_chunks.shape
    rows = queries.shape[0]
    chunk_k = min(k, chunk)
    precision = jax.lax.Precision.HIGHEST if compute_dtype == jnp.float32 else None
    query_ids = block_start + jnp.arange(rows, dtype=jnp.int32)

    def scan_chunk(carry, chunk_inputs):
        best_sims, best_idx = carry
        chunk_vectors, chunk_start = chunk_inputs
        sims = jax.lax.dot_general(
            queries,
            chunk_vectors,
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )
        bank_ids = chunk_start + jnp.arange(chunk, dtype=jnp.int32)
        invalid = (bank_ids >= num_valid)[None, :]
        if exclude_self:
            invalid = invalid | (bank_ids[None, :] == query_ids[:, None])
        sims = jnp.where(invalid, -jnp.inf, sims)
        chunk_sims, chunk_pos = jax.lax.top_k(sims, chunk_k)
        # Running best first: on equal similarity the lower (earlier) bank index wins.
        merged_sims = jnp.concatenate([best_sims, chunk_sims], axis=1)
        merged_idx = jnp.concatenate([best_idx, chunk_start + chunk_pos.astype(jnp.int32)], axis=1)
        best_sims, pos = jax.lax.top_k(merged_sims, k)
        best_idx = jnp.take_along_axis(merged_idx, pos, axis=1)
        return (best_sims, best_idx), None

    init = (
        jnp.full((rows, k), -jnp.inf, jnp.float32),
        jnp.full((rows, k), -1, jnp.int32),
    )
    chunk_starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
    (sims, idx), _ = jax.lax.scan(scan_chunk, init, (bank_chunks, chunk_starts))
    if out_sharding is not None:
        sims = jax.lax.with_sharding_constraint(sims, out_sharding)
        idx = jax.lax.with_sharding_constraint(idx, out_sharding)
    return sims, idx


def _as_matrix(x: Any, name: str) -> Any:
    """Accept a jax array as is and anything else as a numpy array; check it is a finite [n, d]."""
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == jnp.bfloat16):
            raise SemsadError(f"{name} has dtype {x.dtype}; pass a numeric [n, d] feature array.")
    if x.ndim != 2:
        raise SemsadError(f"{name} has shape {tuple(x.shape)}; pass a 2-D [n, d] feature array.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise SemsadError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one feature.")
    finite = jnp.all(jnp.isfinite(x)) if isinstance(x, jax.Array) else np.isfinite(x).all()
    if not bool(finite):
        raise SemsadError(f"{name} contains NaN or infinite values; check the encoder's features.")
    return x


def _data_shards(mesh: Mesh | None) -> int:
    if mesh is None:
        return 1
    if DATA_AXIS not in mesh.axis_names:
        raise SemsadError(
            f"mesh axes {tuple(mesh.axis_names)} lack '{DATA_AXIS}'; build the mesh with a "
            f"'{DATA_AXIS}' axis to shard the queries."
        )
    return int(mesh.shape[DATA_AXIS])


def top_k_cosine(
    queries: Any,
    bank: Any,
    k: int,
    *,
    query_block: int = 1024,
    bank_chunk: int = 65536,
    exclude_self: bool = False,
    normalized: bool = False,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar bank rows of every query, searched exactly on the device.

    Args:
      queries: [Q, D] numpy or jax array (any float dtype).
      bank: [N, D] numpy or jax array; float32 or bfloat16 (a bfloat16 bank is searched in
        bfloat16 with float32 accumulation).
      k: neighbours per query, 1 <= k <= N (N - 1 with ``exclude_self``).
      query_block: queries per device call (rounded up to a multiple of the mesh's data axis).
      bank_chunk: bank rows per scan step; bounds memory to query_block x bank_chunk float32.
      exclude_self: the queries ARE the bank (Q == N, same order); query i never gets index i.
      normalized: both inputs are already L2-normalised (skip the normalisation).
      mesh: optional mesh with a ``"data"`` axis; query blocks are sharded over it, the bank is
        replicated, and the result is the same as without a mesh.

    Returns:
      (similarities float32 [Q, k], indices int32 [Q, k]) as numpy arrays, each row sorted by
      decreasing similarity (ties: lower index first).
    """
    queries = _as_matrix(queries, "queries")
    bank = _as_matrix(bank, "bank")
    num_queries, dim = queries.shape
    num_bank = bank.shape[0]
    if bank.shape[1] != dim:
        raise SemsadError(
            f"queries have dimension {dim} but the bank has {bank.shape[1]}; "
            "use features from the same encoder."
        )
    if exclude_self and num_queries != num_bank:
        raise SemsadError(
            f"exclude_self needs queries == bank, got {num_queries} queries and {num_bank} bank "
            "rows; pass the bank as the queries."
        )
    max_k = num_bank - 1 if exclude_self else num_bank
    if not 1 <= int(k) <= max_k:
        raise SemsadError(f"k={k} is out of range for a bank of {num_bank} rows; use 1..{max_k}.")
    if query_block < 1 or bank_chunk < 1:
        raise SemsadError("query_block and bank_chunk must be >= 1; pass positive sizes.")
    k = int(k)

    shards = _data_shards(mesh)
    block = min(int(query_block), num_queries)
    block = -(-block // shards) * shards
    chunk = min(int(bank_chunk), num_bank)
    num_chunks = -(-num_bank // chunk)

    bank = jnp.asarray(bank)
    bank_chunks = _prepare_bank(
        bank,
        num_chunks=num_chunks,
        chunk=chunk,
        normalize=not normalized,
        dtype=_bank_dtype(bank.dtype),
    )
    query_sharding = out_sharding = None
    if mesh is not None:
        bank_chunks = put(bank_chunks, NamedSharding(mesh, PartitionSpec()))
        query_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS, None))
        out_sharding = NamedSharding(mesh, PartitionSpec())

    results = []
    for start in range(0, num_queries, block):
        query_rows = queries[start : start + block]
        if query_rows.shape[0] < block:
            padding = block - query_rows.shape[0]
            query_rows = jnp.pad(jnp.asarray(query_rows), ((0, padding), (0, 0)))
        query_rows = (
            jnp.asarray(query_rows) if query_sharding is None else put(query_rows, query_sharding)
        )
        results.append(
            _block_top_k(
                query_rows,
                bank_chunks,
                jnp.int32(start),
                jnp.int32(num_bank),
                k=k,
                normalize=not normalized,
                exclude_self=exclude_self,
                out_sharding=out_sharding,
            )
        )
    sims = np.concatenate([np.asarray(s) for s, _ in results])[:num_queries]
    idx = np.concatenate([np.asarray(i) for _, i in results])[:num_queries]
    return sims.astype(np.float32), idx.astype(np.int32)


def semantic_neighbourhoods(bank: Any, k: int = 4, **kwargs: Any) -> np.ndarray:
    """SemSAD's semantic neighbourhoods S(x): the k most cosine-similar other bank rows.

    ``bank`` is [N, D] (features of the training images); returns int32 [N, k], row i never
    contains i. ``kwargs`` go to :func:`top_k_cosine` (query_block, bank_chunk, mesh, normalized).
    """
    _, indices = top_k_cosine(bank, bank, k, exclude_self=True, **kwargs)
    return indices


def pooled_neighbourhoods(
    bank: Any, k: int, pool: int, seed: int = 0, *, block: int = 1024, **kwargs: Any
) -> np.ndarray:
    """S(x) as the paper picks it: the k most cosine-similar among ``pool`` random other rows.

    Paper App. D.2: "the 4 examples with the highest cosine similarity score among 10k random
    examples". Queries are taken in blocks of ``block`` rows; each block draws one pool of
    ``pool`` rows without replacement (as the authors' code searches the previous loader batch),
    so every query's candidates are a uniform random subset. ``pool <= 0`` or ``pool >= N - 1``:
    the whole bank (:func:`semantic_neighbourhoods`). Returns int32 [N, k], row i never holds i.
    """
    bank = np.asarray(bank)
    num = bank.shape[0]
    if pool <= 0 or pool >= num - 1:
        return semantic_neighbourhoods(bank, k, **kwargs)
    if not 1 <= k <= pool - 1:
        raise SemsadError(f"k={k} needs a pool of more than k + 1 rows, got pool={pool}.")
    rng = np.random.default_rng(seed)
    out = np.empty((num, k), np.int32)
    for start in range(0, num, block):
        rows = np.arange(start, min(start + block, num))
        candidates = np.sort(rng.choice(num, size=pool, replace=False))
        _, idx = top_k_cosine(bank[rows], bank[candidates], k + 1, **kwargs)
        found = candidates[idx]  # [rows, k + 1] bank indices, best first
        keep = found != rows[:, None]  # a row may meet itself in its pool: drop it
        keep[keep.sum(axis=1) > k, k] = False  # else drop the (k+1)-th
        out[rows] = found[keep].reshape(len(rows), k)
    return out


def label_neighbourhoods(labels: Any, k: int, seed: int = 0) -> np.ndarray:
    """DIAGNOSTIC S(x): k random other rows with the same label (uses labels; not SemSAD).

    Separates what the encoder limits from what the discriminator limits: with these
    neighbourhoods the discriminator learns from pairs that are semantically close by definition.
    Returns int32 [N, k]; row i never holds i (members repeat when a class has k rows or fewer).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0:
        raise SemsadError(
            "discriminator.neighbourhood='labels' needs a labelled training set; use 'encoder'."
        )
    rng = np.random.default_rng(seed)
    out = np.empty((labels.size, k), np.int32)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            raise SemsadError(f"class {label} has one training image; it has no neighbours.")
        for i in members:
            others = members[members != i]
            out[i] = rng.choice(others, size=k, replace=others.size < k)
    return out
