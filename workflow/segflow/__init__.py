"""segflow: COCO segmentation competition dataset -> submission CSV, as a Snakemake workflow.

Each step is a plain function in its own module with a thin ``python -m segflow.<step>``
command line; the Snakemake rules under ``workflow/rules`` only call those commands.
"""

__version__ = "0.1.0"
