"""Runs the llm service: `python -m services.llm`."""

from services.llm.app import create_service
from services.llm.settings import load_settings
from shared.server import main

if __name__ == "__main__":
    main("llm", load_settings, create_service)
