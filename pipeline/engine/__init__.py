"""The attribution engine: open_clip models cut into towers, NIBT, the paper's metrics, words.

Pure torch and open_clip: no Ray, no storage, no Parquet. ``load_clip`` builds a
model, ``NIBT(clip).attribute(images, tokens)`` attributes a batch, ``confidence``
scores it.
"""
