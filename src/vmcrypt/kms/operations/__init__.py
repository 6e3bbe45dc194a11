"""One KMIP operation per module, each a ``run(ctx, payload) -> response payload``.

:mod:`vmcrypt.kms.dispatch` maps operation codes to these functions; nothing else calls
them. Each module quotes the spec section it implements.
"""
