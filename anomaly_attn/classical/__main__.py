"""``python -m anomaly_attn.classical``: the entry point lives in :mod:`anomaly_attn.cli.classical`."""

from anomaly_attn.cli.classical import main

if __name__ == "__main__":
    raise SystemExit(main())
