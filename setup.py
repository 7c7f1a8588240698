"""The wheel's packages: every ``anomaly_attn*`` package, and the top-level ``conf/`` as anomaly_attn.conf.

Everything else is in pyproject.toml, including the ``conf/`` → ``anomaly_attn.conf`` mapping
(``[tool.setuptools.package-dir]``) and its yaml files (``package-data``). Only the package list is made
here: pyproject.toml can discover packages or list them, but not discover them and add mapped ones, and
a hand-kept list would silently drop the next new subpackage or config group. Config groups (conf/*/)
are listed as packages too, as setuptools asks of data directories.
"""

from setuptools import find_namespace_packages, find_packages, setup

code = find_packages(include=["anomaly_attn", "anomaly_attn.*"])
config_groups = [f"anomaly_attn.conf.{group}" for group in find_namespace_packages(where="conf")]
setup(packages=[*code, "anomaly_attn.conf", *config_groups])
