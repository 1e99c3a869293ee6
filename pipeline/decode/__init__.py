"""Decoding: a batch's image and caption cells to pixels and tokens, in threads, in worker
processes or on the device (``build``, the one place that chooses which).

``io/images.py`` turns one cell into an upright image or text without torch; this
package runs those steps over a batch (``pool``), cuts the model's transform into
per-image pixel steps and one batch normalisation (``pixels``), and decodes JPEGs
on the device (``device``). It needs torch, no Ray and no storage.
"""
