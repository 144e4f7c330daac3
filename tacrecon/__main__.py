"""Entry point for ``python -m tacrecon``."""

from tacrecon.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
