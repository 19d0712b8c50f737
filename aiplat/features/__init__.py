"""Feature engineering for the feature store: tables, training sets, the Feast store and gates.

Plain functions; the Dagster assets in assets/features.py and the `aiplat features` CLI call them.
Importing this package does not import feast (store.py does, when used).
"""
