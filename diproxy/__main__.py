"""Entry point for `python -m diproxy`."""

from diproxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
