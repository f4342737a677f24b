"""The deployer's controller: `python -m services.deployer.controller` (see reconcile.py)."""
