"""The campaign report renderer: report.md, its PNG figures and the model card, from a spec and a status.

Both the worker's report stage (in the cluster) and the local runner (`consistency report`) draw the
same report with it, so it imports only consistency_core and third-party libraries, never the worker or
the local runner.
"""
