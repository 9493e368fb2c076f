"""Closed-form references for testing samplers, guidance and editing without a trained network."""
