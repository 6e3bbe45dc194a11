"""Control plane services: decisions the API delegates (keys to hosts, VM life cycle).

Data flows one way: API routers → these services → providers and the host client.
"""
