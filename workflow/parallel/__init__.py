"""parallel: process groups, the communication counter (every message sent and counted), and
tensor-parallel sync points (mappings: f and g).
"""
