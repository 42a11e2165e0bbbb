"""Probe (issue 19, not a library option): SemSAD's score against its contrast with random
references, on a validation workdir.

    PYTHONPATH=. python THIS_FILE WORKDIR R OUT.json   # R random training images as partners

raw       s(nn(x), x)                              (the paper)
contrast  s(nn(x), x) - logmeanexp_j s(r_j, x)      (x's level removed; r_j random training images)
nnlevel   s(nn(x), x) - logmeanexp_j s(nn(x), r_j)  (the neighbour's level removed)
level     logmeanexp_j s(r_j, x)                   (x's level alone)
"""

import json
import sys

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from semsad_jax.data import DataSets
from semsad_jax.evaluation.detector import Detector

d, R = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32
det = Detector.restore(d)
cfg = det.config
bank = det.bank
rng = np.random.default_rng(0)
refs = bank.images[rng.choice(len(bank.images), R, replace=False)]
ds = DataSets(cfg.data, 0)
sets = {"in": ds.load(cfg.data.test)}
for name, spec in cfg.eval.ood.items():
    sets[name] = ds.load(spec)
lme = lambda a: logsumexp(a, axis=1) - np.log(a.shape[1])
out = {}
for name, s in sets.items():
    x = s.images
    sc, _, nn = det.score_with_neighbours(x, k=1)
    n = len(x)
    vs_refs = det.pair_scores(np.tile(refs, (n, 1, 1, 1)), np.repeat(x, R, axis=0)).reshape(n, R)
    nb = bank.images[nn.indices[:, 0]]
    nb_level = det.pair_scores(np.repeat(nb, R, axis=0), np.tile(refs, (n, 1, 1, 1))).reshape(n, R)
    out[name] = dict(
        raw=sc,
        contrast=sc - lme(vs_refs),
        nnlevel=sc - lme(nb_level),
        level=lme(vs_refs),
        knn=nn.similarities[:, 0],
    )


def auc(a, b):
    return round(100 * roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]), 1)


res = {}
for kind in ("raw", "contrast", "nnlevel", "level", "knn"):
    res[kind] = {n: auc(out["in"][kind], v[kind]) for n, v in out.items() if n != "in"}
    far = [v for k, v in res[kind].items() if k.startswith("far_")]
    print(kind, res[kind], f"far mean {np.mean(far):.1f} worst {min(far):.1f}", flush=True)
if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as f:
        json.dump(res, f, indent=1)
