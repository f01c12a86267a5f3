"""ling-convert: checkpoint toolchain for the Ling family of MoE models.

Formats are nodes, converters are edges; every path through the graph is lazy
(tensor by tensor) and every output is written atomically.

    >>> from ling_convert import api
    >>> api.convert("Ling-lite-bin/", "Ling-lite-st/", to="safetensors")  # doctest: +SKIP
"""

__version__ = "0.1.0"
