"""World Models (Ha & Schmidhuber, 2018) in modern PyTorch."""

__version__ = "0.1.0"
