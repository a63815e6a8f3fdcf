"""The fine-tuning trainer that a FineTuneJob's Job runs: ``python -m llmops_workloads.training
--config config.yaml`` (docs/trainer.md is the contract)."""
