"""Where the Hydra configs live (``paths``), which ``_target_``/``_module_`` a config may name
(``safety``) and the import of users' extension modules (``extensions``). Torch-free."""
