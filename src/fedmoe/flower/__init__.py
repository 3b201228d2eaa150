"""fedmoe as a Flower app: the same method, engine and methods, across machines.

``fedmoe.flower.server_app:app`` (ServerApp) and ``fedmoe.flower.client_app:app``
(ClientApp) are declared in pyproject.toml's ``[tool.flwr.app.components]``, so
``flwr run .`` runs them on Flower's Simulation Engine or Deployment Engine. See
docs/flower.md. Needs the ``flower`` extra: ``pip install 'fedmoe[flower]'``.
"""
