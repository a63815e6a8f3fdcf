"""A development-only node for the local cluster: runs the pods bound to it as local processes
and proxies Services (see ``runner.py``)."""
