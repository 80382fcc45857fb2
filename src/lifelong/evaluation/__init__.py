"""The accuracy (or perplexity) matrix, the figures derived from it, and reports."""
