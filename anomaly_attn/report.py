"""``python -m anomaly_attn.report``: the entry point lives in :mod:`anomaly_attn.cli.report`."""

from anomaly_attn.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
