"""Reports: a study's result tables -> summary CSV/Parquet, plots and a self-contained HTML page."""
