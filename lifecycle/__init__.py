"""Lifecycle: a scheduled batch ELT + ML pipeline for customer-lifecycle management."""

__version__ = "0.1.0"
