"""``python -m anomaly_attn.baselines``: the old name of ``python -m anomaly_attn.classical`` (overrides
``baseline=``/``baseline.*`` become ``detector=``/``detector.*``; see :mod:`anomaly_attn.cli.classical`)."""

from anomaly_attn.cli.classical import main_under_old_name as main

if __name__ == "__main__":
    raise SystemExit(main())
