"""Where the Hydra configs live (``paths``), which ``_target_``/``_module_`` a config may name
(``safety``), the import of users' extension modules (``extensions``) and the resolvers ``conf/`` uses
(``resolvers``, registered here: whatever reads or resolves a config imports this package). Torch-free."""

from anomaly_attn.config import resolvers  # noqa: F401  (registers the resolvers)
