"""Dataset makers and indexers: the embedded synthetic data and the folder/split indexer."""
