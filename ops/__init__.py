"""mxport.ops."""
