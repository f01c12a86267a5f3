"""Megatron-Core (torch_dist) support: key map, config from training args, multi-process writing."""
