"""Readers and writers for the dataset formats users already have."""
