"""Command line: ``lightning-landscape demo | scan | compare``."""
