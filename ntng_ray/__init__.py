"""ntng_ray: does an efficient-training trick really save compute? Pretrain under a fixed RST budget and see."""

__version__ = "0.1.0"
