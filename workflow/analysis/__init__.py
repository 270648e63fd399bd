"""analysis: statistics, gates and the verdict, tables, plots, the summary page, the compute plan
and the communication report (what the analysis rules run).
"""
