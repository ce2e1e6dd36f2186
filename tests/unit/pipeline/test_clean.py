"""The clean stage without data: the error says what to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.config import CleanParams, DataParams
from bbt.errors import DataError
from bbt.pipeline.clean import Cast, run_clean


def test_missing_data_says_dvc_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="run `dvc pull data.dvc`"):
        run_clean(DataParams(), CleanParams(), Cast(("howard", "raj"), 7, ""))
