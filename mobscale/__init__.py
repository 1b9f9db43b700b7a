"""mobscale: synthetic multi-level mobile-network traffic and user mobility.

Pipeline (one sub-package per step): data -> model | diffusion -> train -> sample -> eval -> launch.
"""

__version__ = "0.1.0"
