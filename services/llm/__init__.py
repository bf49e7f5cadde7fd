"""The llm service: provider routing with classified failover."""
