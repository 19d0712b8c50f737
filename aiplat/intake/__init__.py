"""Data intake: declared record schemas, line-by-line validation, quarantine."""
