"""Peers benchmarked beside our services, installed into their own environment."""
