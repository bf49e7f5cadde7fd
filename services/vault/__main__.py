"""Runs the vault service: `python -m services.vault`."""

from services.vault.app import create_service
from services.vault.settings import load_settings
from shared.server import main

if __name__ == "__main__":
    main("vault", load_settings, create_service)
