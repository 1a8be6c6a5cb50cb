"""Exploration methods: E3 rollout budgets and entropy-keeping temperature."""
