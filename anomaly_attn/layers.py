"""``python -m anomaly_attn.layers``: the entry point lives in :mod:`anomaly_attn.cli.layers`."""

from anomaly_attn.cli.layers import main

if __name__ == "__main__":
    raise SystemExit(main())
