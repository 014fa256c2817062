"""Carrier clients."""
