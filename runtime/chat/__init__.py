"""Chat: formats (harmony.py, template.py) and the chat session (session.py)."""
