.PHONY: dev test materialize bench stop
dev:          ## set up what is missing, start the local runtime and the Dagster UI
	scripts/dev.sh
test:         ## set up what is missing and run the whole test suite
	scripts/test.sh
materialize:  ## headless: ingest every landed batch and rebuild the whole graph (runs act as the service account)
	.venv/bin/aiplat materialize
stop:         ## stop the local runtime's services
	.venv/bin/aiplat stack down
