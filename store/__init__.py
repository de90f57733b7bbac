"""The store: one SQLAlchemy schema, its Alembic migrations and the engine factory.

Shared by the directory, mail, instant and audit layers, which is why it is a package of
its own rather than part of one of them; each layer keeps its queries in its own module.
"""
