"""What identifies a trained stage, and the one-line refusal when a workdir holds another.

A stage's identity (:func:`stage_identity`) is everything that changes its weights: the stage's
config section except the keys that only say how long or how it runs (epochs, checkpoint and log
intervals, conv_impl, ...), the training data (its spec and, when the run loaded it, the digest of
the decoded images), the seed and the compute dtype. ``epochs`` counts too when the learning-rate
schedule's shape depends on the total number of steps (``cosine``): there a longer run is another
curve, not an extension. Resuming or reusing a stage with a different identity is refused with one
line naming the differing keys (:func:`identity_problem`).

stage.json records :data:`IDENTITY_VERSION`, the meaning of the identity's values. A stage recorded
by an older version (or with no version), or whose identity lacks a key that this version
compares, is refused like any other difference: an old value may mean something else today (the
paper's pairs changed meaning with version 2) and an old stage has no digest of its data, so no
migration could prove it the same. Bump the version whenever a config value changes what it trains.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "IDENTITY_VERSION",
    "TRAIN_DIGEST",
    "identity_diff",
    "identity_digest",
    "identity_problem",
    "run_identities",
    "run_only_keys",
    "stage_identity",
]

# Keys of a stage's section that never change its weights (the number of epochs may be extended).
RUN_ONLY_KEYS = {
    "encoder": (
        "epochs",
        "conv_impl",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
        "knn_every_epochs",
        "knn_k",
        "knn_temperature",
    ),
    "discriminator": (
        "epochs",
        "conv_impl",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
        "feature_batch_size",
    ),
    "rotation": (
        "enabled",
        "epochs",
        "conv_impl",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
    ),
}
# Keys of the data section that change what the networks are trained on.
DATA_KEYS = ("train", "image_size", "contamination", "contamination_source")
# The identity key holding the digest of the decoded training images (data.arrays.images_digest).
TRAIN_DIGEST = "data.train_digest"
# Schedules whose shape depends on the total number of steps: there ``epochs`` is identity.
SCHEDULES_OVER_TOTAL = ("cosine",)
# What the identity's values mean: 1 (or no version) = before provenance checks (issue 16); 2 = the
# paper's pairs of issue 11, data digests, epochs under cosine. Bump when a value changes meaning.
IDENTITY_VERSION = 2
_MISSING = "<not recorded>"
# Keys added after IDENTITY_VERSION 2 with the value that every stage recorded without them was
# trained with: a record lacking one of them matches that value (and only that value).
ADDED_KEYS = {
    "discriminator.shifted_kind": "rotate_or_quadrants",
    "discriminator.matched_views": False,
    "discriminator.arch": "pair",
    "discriminator.init_from_encoder": False,
    "discriminator.trunk_lr_scale": 1.0,
    "encoder.stem_stride": 1,
    "encoder.shifted_instances": False,
    "encoder.shift_head_weight": 1.0,
}


def _plain(value: Any) -> Any:  # also the workdir's JSON memory (layout)
    """``value`` as JSON gives it back (tuples -> lists, ConfigDicts -> dicts), for comparisons."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def run_only_keys(stage: str, section: Any) -> tuple[str, ...]:
    """Keys of ``section`` that never change the stage's weights (``epochs`` only where the
    schedule does not depend on the total number of steps)."""
    keys = RUN_ONLY_KEYS[stage]
    if section.get("schedule") in SCHEDULES_OVER_TOTAL:
        keys = tuple(k for k in keys if k != "epochs")
    return keys


def stage_identity(
    stage: str,
    section: Any,
    data: Any,
    seed: int,
    dtype: str,
    upstream: dict | None = None,
    train_digest: str | None = None,
) -> dict:
    """What must match for a stage's checkpoints to be resumed or reused (flat ``key -> value``).

    Args:
      stage: "encoder" or "discriminator".
      section: the stage's config section; every key but :func:`run_only_keys` counts.
      data: the ``data`` section (:data:`DATA_KEYS` count).
      seed, dtype: the run's seed and compute dtype.
      upstream: the identity of the stage this one is built on (the encoder's, for the
        discriminator), merged in.
      train_digest: the digest of the decoded training images (``data.train_digest``), when the
        run has loaded them; left out (not compared) where only the workdir is at hand.
    """
    section = _plain(section)
    skip = run_only_keys(stage, section)
    ident = {f"{stage}.{k}": v for k, v in sorted(section.items()) if k not in skip}
    data = _plain(data)
    ident.update({f"data.{k}": data.get(k) for k in DATA_KEYS})
    if train_digest is not None:
        ident[TRAIN_DIGEST] = str(train_digest)
    ident.update({"seed": int(seed), "dtype": str(dtype)})
    if upstream:
        ident.update({k: v for k, v in upstream.items() if k not in ident})
    return ident


def _recorded(recorded: dict, key: str) -> Any:
    """The value ``recorded`` holds for ``key``: a key added later reads as the value every older
    stage was trained with (:data:`ADDED_KEYS`), another absent key as ``<not recorded>``."""
    return recorded.get(key, ADDED_KEYS.get(key, _MISSING))


def identity_diff(recorded: dict, wanted: dict) -> list[str]:
    """Keys of ``wanted`` whose recorded value differs, or that the record lacks."""
    return sorted(k for k in wanted if _recorded(recorded, k) != wanted[k])


def identity_digest(identity: dict) -> str:
    """A short digest of an identity (recorded in stage.json and results.json)."""
    text = json.dumps(_plain(identity), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def describe_diff(recorded: dict, wanted: dict, keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(
        f"{k}={_recorded(recorded, k)!r} (config: {wanted.get(k)!r})" for k in keys[:limit]
    )
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


def identity_problem(
    held: str, stage: str, meta: dict, identity: dict, hint: str | None = None
) -> str | None:
    """Why the recorded stage.json ``meta`` may not be resumed or reused as ``identity``, in one
    line ending in what to do, or None when it may. ``held``: "DIR holds an encoder"."""
    recorded = meta.get("identity", {})
    advice = hint or (
        f"use the matching config, another --workdir, or --overwrite to retrain (the old "
        f"stage is kept as {stage}.old-<time>)"
    )
    version = meta.get("identity_version")
    if version != IDENTITY_VERSION:
        return (
            f"{held} recorded by an older semsad-jax (identity version {version}, this one "
            f"reads {IDENTITY_VERSION}), whose settings may mean other things today; {advice}."
        )
    diff = identity_diff(recorded, identity)
    if TRAIN_DIGEST in diff and TRAIN_DIGEST in recorded:
        return (
            f"{held} trained on other images: data.train={identity.get('data.train')!r} "
            f"decodes to digest {identity[TRAIN_DIGEST]} now, {recorded[TRAIN_DIGEST]} when it "
            f"was trained; restore those images, or {advice}."
        )
    if diff:
        return f"{held} trained with {describe_diff(recorded, identity, diff)}; {advice}."
    return None


def run_identities(config: Any, train_digest: str | None = None) -> dict[str, dict]:
    """{"encoder": identity, "discriminator": identity[, "rotation": identity]} of a whole run
    config (the discriminator's includes the encoder's, so a discriminator is tied to the encoder it
    was trained on; the rotation network stands alone, and is there when the config has a
    ``rotation`` section). ``train_digest``: the digest of the decoded training images, when the
    run has loaded them."""
    seed, dtype = int(config.seed), str(config.dtype)
    kw = dict(train_digest=train_digest)
    encoder = stage_identity("encoder", config.encoder, config.data, seed, dtype, **kw)
    discriminator = stage_identity(
        "discriminator", config.discriminator, config.data, seed, dtype, upstream=encoder, **kw
    )
    out = {"encoder": encoder, "discriminator": discriminator}
    rotation = getattr(config, "rotation", None)
    if rotation is not None:
        out["rotation"] = stage_identity("rotation", rotation, config.data, seed, dtype, **kw)
    return out
