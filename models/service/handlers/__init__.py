"""The use cases, one module per subject; :mod:`models.service.messagebus` maps each command to one."""
