"""LoRA fine-tuning for support-ticket triage, and its MLflow tracking and registration."""
