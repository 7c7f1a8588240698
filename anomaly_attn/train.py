"""``python -m anomaly_attn.train``: the entry point lives in :mod:`anomaly_attn.cli.train`."""

from anomaly_attn.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
