"""Entry points: ``nibt-audit``, ``nibt-report``, ``nibt-explain``."""
