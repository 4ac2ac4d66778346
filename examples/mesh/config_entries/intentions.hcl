# Least privilege: only the Logic Router may reach Authentik's API; the JWKS endpoint is
# readable by every caller with GET.
Kind = "service-intentions"
Name = "authentik"
Sources = [
  {
    Name = "logic-router"
    Permissions = [
      { Action = "allow", HTTP = { PathPrefix = "/application/o/", Methods = ["GET", "POST"] } },
      { Action = "allow", HTTP = { PathExact = "/-/health/ready/" } },
    ]
  },
  { Name = "config-api", Action = "deny" },
]
