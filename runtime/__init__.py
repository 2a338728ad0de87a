"""mxport.runtime."""
