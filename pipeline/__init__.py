"""4D language fields from videos: every stage of the workflow as a plain function.

Nothing in this package imports Snakemake; the workflow calls `python -m pipeline <stage>`.
"""

__version__ = "0.1.0"
