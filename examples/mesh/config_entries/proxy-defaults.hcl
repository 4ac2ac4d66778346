# Mesh-wide proxy defaults: services speak HTTP unless their service-defaults say otherwise.
Kind = "proxy-defaults"
Name = "global"
Config {
  protocol = "http"
}
