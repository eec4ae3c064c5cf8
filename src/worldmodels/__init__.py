"""World Models (Ha & Schmidhuber, 2018) in modern PyTorch."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``worldmodels.Agent`` without importing torch for ``worldmodels --help``
    if name == "Agent":
        from worldmodels.agent import Agent

        return Agent
    raise AttributeError(f"module 'worldmodels' has no attribute {name!r}")


__all__ = ["Agent", "__version__"]
