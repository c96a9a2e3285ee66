"""Datasets, manifests, splits and caches: manifest -> split -> dataset."""
