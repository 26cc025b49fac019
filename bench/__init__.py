"""Benchmarks: ``make bench`` runs them all; figures go to BENCHMARKS.md with their command."""
