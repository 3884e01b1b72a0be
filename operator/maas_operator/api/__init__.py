"""The custom resources' API: pydantic models, the single source of truth for the CRDs."""
