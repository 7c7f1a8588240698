"""Entry points (``python -m anomaly_attn.<entry>`` runs ``cli/<entry>.py``) and what only they need:
argument quoting and checks, sweep expansion, job isolation and the sweep summary, hparams_search."""
