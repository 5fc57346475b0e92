"""The Seed IDP services, one package each; `python -m services.<name>` runs one."""
