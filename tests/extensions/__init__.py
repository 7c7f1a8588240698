"""User extensions as a user writes them: each one module here plus one yaml in conf/ (a user config dir),
nothing in anomaly_attn edited. tests/unit/test_extensions.py runs them through the CLI."""
