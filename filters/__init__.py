"""Scorers (decoded frames -> raw score columns) and the threshold policy that reads them."""
