"""Policy models: loading, log-probs and entropy at a temperature, the shipped tiny model."""
