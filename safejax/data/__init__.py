"""The safety data pipeline: read, score, route, generate, tag, write (see DESIGN.md).

Every stage is a pure function on records (plain dicts) in its own module; `pipeline` wires the
same functions as Apache Beam transforms and as a plain Python loop.
"""
