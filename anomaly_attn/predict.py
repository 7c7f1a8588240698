"""``python -m anomaly_attn.predict``: the entry point lives in :mod:`anomaly_attn.cli.predict`."""

from anomaly_attn.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
