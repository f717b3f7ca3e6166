"""The use cases: ``messagebus.handle(command, ctx)`` runs the handler of a command in a unit of
work (``unit_of_work``); ``handlers/`` holds one module per subject; ``inbox`` applies an input
message once; ``rotation`` re-seals the CVCs under a new key (the operator's job)."""
