"""learnstream."""
