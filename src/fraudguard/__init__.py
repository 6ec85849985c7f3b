"""FraudGuard."""
