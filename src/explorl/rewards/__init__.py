"""Built-in reward functions with the TRL signature."""
