"""The use cases, one module per subject; :mod:`models.messagebus` maps each command to one."""
