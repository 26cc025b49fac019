"""Tests of the local AWS stand-in."""
