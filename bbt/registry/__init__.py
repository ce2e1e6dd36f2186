"""Where models are kept: the MLflow store and registry, the BentoML model store, model cards and the
leaderboard. Imports `bbt.config`, `bbt.model`, `bbt.vision` and the shared modules at the top."""
