"""Scoring localization: pose-error metrics, sequence evaluation, and reports."""
