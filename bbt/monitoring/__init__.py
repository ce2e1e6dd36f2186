"""What the service answered, logged per request, read back and compared with the champion's answers on the
test split (`bbt monitor`). Imports `bbt.registry`, `bbt.config`, `bbt.model`, `bbt.vision`."""
