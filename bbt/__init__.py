"""bbt: recognise the people of params.yaml's `cast` (by default the four lead actors of "The Big Bang Theory")
in photos."""

import os

# The most pixels a photo may have: serve.max_megapixels' default, and Pillow's and OpenCV's own bomb checks.
MAX_PIXELS = 40_000_000
# OpenCV reads this limit once, when cv2 is first imported; every entry point imports bbt first.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
# Offline machines and privacy: no usage telemetry from the libraries we drive.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")
# Quiet terminals: no tqdm bar per artifact MLflow downloads (the registry, BentoML's import of a champion).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The logged model's environment is given whole (bbt.pipeline.register.model_conda_env): MLflow need not look for
# a uv project to infer it, nor say so on every log.
os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")

if os.environ.get("BBT_RECORD_READS"):  # tests/integration: what a stage reads, against dvc.yaml
    from bbt.reads import start_recording

    start_recording(os.environ["BBT_RECORD_READS"])

# The answer for a face that is not one of the cast (and the label of the reviewed strangers' faces).
UNKNOWN = "unknown"
# The answer for a face the model cannot judge (too small): neither an actor nor "not one of the four".
CANT_TELL = "cant_tell"
