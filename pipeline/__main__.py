"""``python -m pipeline``: the same as ``nibt-audit``."""

from pipeline.cli.audit import main

if __name__ == "__main__":
    main()
