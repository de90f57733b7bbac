"""msante: the composition root (`msante` command, wiring of every listener on one event loop)."""
