"""The paper's findings on our own offline model (`imagen-bench findings`): an experiment above the harness.

findings.run measures them (grid studies through bench.grid, ablation models through imagen.train); findings.report
writes them up (docs/findings.md, figures, a verdict each) from those measurements and the studies' stored rows.
"""
