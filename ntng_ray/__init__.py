"""ntng_ray: does an efficient-training trick really save compute? Measure it on an RST budget."""

__version__ = "0.1.0"
