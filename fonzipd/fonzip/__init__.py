"""The only package that knows Fonzip's HTTP API."""
