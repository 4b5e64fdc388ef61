"""Serving targets: the engines and precisions an exported assembly can be served in (see `targets`)."""
