"""The attribution engine: open_clip models cut into towers, NIBT, the paper's metrics, words.

Pure torch and open_clip: no Ray, no storage, no Parquet. ``load_clip`` builds a
model, ``NIBT(clip).attribute(images, tokens)`` attributes a batch, ``confidence``
scores it.
"""

#: Version of the values the audit writes for a pair. Bump it in any change that
#: alters them for the same input, model, weights and settings (the engine here,
#: the per-pair results of ``pipeline.job.attribute``, decoding and preprocessing):
#: it is part of the results fingerprint, so committed parts are then recomputed.
#: ``tests/unit/test_golden.py`` fails when the engine's output changes without it.
RESULTS_VERSION = 2
