"""``python -m anomaly_attn.evaluate``: the entry point lives in :mod:`anomaly_attn.cli.evaluate`."""

from anomaly_attn.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
