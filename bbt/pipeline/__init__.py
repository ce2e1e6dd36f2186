"""The dvc.yaml stages (clean, featurize, audit, search, evaluate, register) and what only they use: the human
review's annotations, the detection cache, the data remote. Imports the layers below it: `bbt.monitoring` (the
reference it registers), `bbt.registry`, `bbt.config`, `bbt.model`, `bbt.vision`."""
