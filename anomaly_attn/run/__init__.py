"""A run directory: its typed record (``record.py``) and the files it holds (``store.py``). No Lightning."""
