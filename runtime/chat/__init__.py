"""Chat: one format interface (format.py) implemented by harmony (harmony.py, its tools: harmony_tools.py) and jinja
chat templates (template.py), and the session over any format (session.py); `mxport chat` and the server share them."""
