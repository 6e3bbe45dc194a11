"""The control plane database: models, migrations, the engine, repository functions.

Import :func:`vmcrypt.control.db.engine.open_database` to open one, the models from
:mod:`.models` and the functions from :mod:`.repo`.
"""
