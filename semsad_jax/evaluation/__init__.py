"""Evaluation and inference: the Detector API (:mod:`.detector`), --mode=eval (:mod:`.evaluate`),
--mode=score (:mod:`.score`), baselines, the multi-run report and plots. Imports no training module."""
