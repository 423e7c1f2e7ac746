"""cocasbi: COCA-accelerated particle-mesh simulations for simulation-based inference.

The pipeline flows one way: cosmology -> ic -> nbody (mesh, frame) -> stats -> forward ->
campaign -> inference.
"""

__version__ = "0.1.0"
