"""banana.kernels"""
