"""Entry point for `python -m diproxy.shipper`."""

from diproxy.shipper.service import main

if __name__ == "__main__":
    raise SystemExit(main())
