"""mest-compile: MEST sparse training with compiled sparse kernels."""
