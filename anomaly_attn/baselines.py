"""``python -m anomaly_attn.baselines``: the entry point lives in :mod:`anomaly_attn.cli.baselines`."""

from anomaly_attn.cli.baselines import main

if __name__ == "__main__":
    main()
