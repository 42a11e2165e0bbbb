"""The configs of a source checkout: the top-level ``configs/`` folder, importable as ``semsad_jax.configs``.

A built wheel maps this package onto ``configs/`` itself (pyproject.toml,
``[tool.setuptools.package-dir]``), so this file is never installed: there is one copy of each config.
"""

import os

__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")]
