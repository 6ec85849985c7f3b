"""Transaction data: schema, simulator, reading, validation and DVC versioning."""
