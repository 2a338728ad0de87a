"""mxport.exporter."""
