"""The datasets, one module each: its raw ``SOURCES``, its ``DATASETS`` (workflow.data.spec) and
the preparer that tokenizes it. workflow.data.registry registers each module with one line."""
