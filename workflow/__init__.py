"""stagerun: staged language-model training experiments as a Snakemake workflow.

Each submodule is a step of the data flow and most are runnable as
``python -m workflow.<step>``; see docs/architecture.md for the map.
"""

__version__ = "0.1.0"
