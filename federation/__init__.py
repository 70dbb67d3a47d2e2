"""meshfed hub runtime: kopf handlers, member clients and caches, executor, status writer, CLI.

The only package that talks to Kubernetes API servers; it imports the pure packages
(accesspoint, placement, nameservice, certs), never the other way round.
"""
