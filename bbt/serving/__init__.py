"""The BentoML service and its HTTP contract: limits, admission, the web page, feedback and model-card routes,
and waiting for a server to be ready. Imports `bbt.review` (the feedback store) and the layers below it."""
