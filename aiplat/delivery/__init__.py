"""Delivery: what CI/CD uses to drive a deployed platform (launch a pipeline over Dagster's GraphQL
API and wait for its gate)."""
