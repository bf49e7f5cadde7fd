"""`python -m services.auth`: the auth service."""

from services.auth.app import create_service
from services.auth.settings import load_settings
from shared.server import main

if __name__ == "__main__":
    main("auth", load_settings, create_service)
