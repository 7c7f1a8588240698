"""Small helpers every room may use: atomic file writes, name registries, config/code fingerprints, the
validation objective. Imports nothing else of the package (torch-free)."""
