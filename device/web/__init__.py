"""The reader's local web interface (see app)."""
