"""The mxport subcommands: argument parsing and printing over the libraries (mxport/cli.py dispatches)."""
