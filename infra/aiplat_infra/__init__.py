"""ai-platform's cloud side as a Pulumi (Python) program; unit-tested with Pulumi's mock runtime."""
