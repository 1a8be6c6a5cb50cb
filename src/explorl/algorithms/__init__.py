"""Pure tensor functions: advantage estimators, policy losses, KL estimators."""
