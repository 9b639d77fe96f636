"""imagen-bench: prompt suites, grids, generation, metrics and the result store around the Imagen model."""
