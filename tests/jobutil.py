"""Job settings for tests: the small random demo architecture, 16-row tasks."""

from __future__ import annotations

from pipeline.config import (
    ClusterSettings,
    DataSettings,
    ModelSettings,
    RunSettings,
    StorageSettings,
)
from pipeline.job.driver import JobSettings

TEST_MODEL = dict(name="nibt-demo", pretrained=None, image_layer=1, text_layer=1, steps=3,
                  batch_size=8)


def settings(inp, out, *, endpoint: str | None = None, model=None, data=None, run=None,
             cluster=None) -> JobSettings:
    return JobSettings(
        input=inp,
        output=out,
        model=ModelSettings(**{**TEST_MODEL, **(model or {})}),
        data=DataSettings(**{"id_column": "id", "keep_columns": ["extra"], **(data or {})}),
        storage=StorageSettings(endpoint_url=endpoint),
        cluster=ClusterSettings(**(cluster or {})),
        run=RunSettings(**{"rows_per_task": 16, "progress": False, **(run or {})}),
    )
