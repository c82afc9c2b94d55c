"""HTTP API (contract: shared/API.md). Thin: HTTP in, a use case call, HTTP out."""
