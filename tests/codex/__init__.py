"""The real OpenAI Codex CLI as a test client: where it is installed, how it is run, what it sent."""
