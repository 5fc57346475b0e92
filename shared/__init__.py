"""Library code shared by every Seed IDP service; it knows no service's domain."""
