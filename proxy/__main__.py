"""`python -m proxy` is the same program as the `prometheus-gateway` script."""

from proxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
