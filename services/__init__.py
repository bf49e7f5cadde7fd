"""The four Empire Security services."""
