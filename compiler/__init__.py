"""banana.compiler: import, quantize, fuse, build and emit a denoiser for one phone SoC."""
