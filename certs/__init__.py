"""Credentials: the dev PKI, TLS contexts, JOSE primitives and access tokens.

Everything that proves who is on the other end lives here, so that the rules about it
(which TLS suites, which certificate fields carry the national identifier, which token
algorithms are refused) are written once and every listener applies the same ones.
Mapping an identifier to a directory entry is not done here: see `directory.authn`.
"""
