"""`python -m services.cache`: the cache service."""

from services.cache.app import create_service
from services.cache.settings import load_settings
from shared.server import main

if __name__ == "__main__":
    main("cache", load_settings, create_service)
