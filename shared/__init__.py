"""The runtime every Empire Security service shares."""
