"""AI security controls: signed model artifacts, access control and the hash-chained audit log."""
