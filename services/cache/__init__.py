"""The cache service: route policies, two tiers, coherent invalidation, leases."""
