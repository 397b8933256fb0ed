"""The Cello pipeline DAG (`cello.py`) and its compiled IR YAML (`cello.yaml`, committed, kept current by a test)."""
