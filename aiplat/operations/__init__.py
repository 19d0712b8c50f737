"""Operations: the request log, cost attribution and budgets, endpoint metrics from vLLM's /metrics."""
