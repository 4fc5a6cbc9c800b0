"""Pictures in: the data model, archive safety, discovery, splits, the report, decoding, uploads, caches, banks, augmentation."""
