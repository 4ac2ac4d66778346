# What each datacenter publishes, and to whom (a consumer Peer names a datacenter).
# Services not listed here have no filter chain on their ingress gateway: refused.
Kind = "exported-services"
Name = "default"
Services = [
  # authn
  { Name = "authentik",    Consumers = [{ Peer = "media-core" }, { Peer = "platform-config" }] },
  { Name = "forward-auth", Consumers = [{ Peer = "media-core" }] },
  { Name = "jwks",         Consumers = [{ Peer = "media-core" }, { Peer = "platform-config" }] },
  # media-core
  { Name = "logic-router", Consumers = [{ Peer = "authn" }] },
  { Name = "postgrest",    Consumers = [{ Peer = "platform-config" }] },
  { Name = "minio",        Consumers = [{ Peer = "platform-config" }] },
  # platform-config
  { Name = "config-api",   Consumers = [{ Peer = "media-core" }, { Peer = "authn" }] },
]
