"""Retrieval: chunks of the redacted KB, their embeddings and the Milvus index that serves them.

Plain functions; the Dagster assets in assets/retrieval.py, the `aiplat index` CLI and the tests
all call these.
"""
