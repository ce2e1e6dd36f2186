"""The model: the feature-set and model-family registries, the search's candidates, the open-set rule that can
answer "unknown", and the one inference path from a photo to answers. Imports `bbt.vision` and `bbt.errors`."""
