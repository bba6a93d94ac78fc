"""HTTP plumbing shared by the two Flask APIs: one error shape, tokens, rate limits, OpenAPI documents."""
