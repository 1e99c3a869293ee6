"""Storage and formats: filesystems, input shards, images and captions, result parts,
the manifest and the run summary.

No torch and no Ray: the report reads results through this package.
"""
