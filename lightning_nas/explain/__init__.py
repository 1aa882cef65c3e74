"""Pure-torch / Captum analyses (no Lightning import) that explain search and compression decisions."""
