"""The human review: the review app (`bbt review`), its queue and verdicts (review/corrections.csv), and the
store of wrong answers users report. Imports `bbt.pipeline` and the layers below it."""
