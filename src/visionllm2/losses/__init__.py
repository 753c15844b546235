"""Matching and losses, kept apart from the modules they score."""
