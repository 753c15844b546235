"""Generation loop, predictor and typed results."""
