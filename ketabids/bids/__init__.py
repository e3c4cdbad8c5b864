"""BIDS: dataset queries, derivative names and descriptions, validation."""
