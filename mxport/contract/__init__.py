"""The contracts two parts of mxport agree on, spelled once (ground floor: numpy + stdlib + mxport.errors only)."""
