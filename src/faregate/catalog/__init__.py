"""Models, prices, aliases, capabilities; price lookup; cost math."""

from faregate.catalog.models import (
    SIM_PROVIDER,
    Catalog,
    Model,
    Offer,
    build_catalog,
    provider_enabled,
    sim_active,
)

__all__ = ["SIM_PROVIDER", "Catalog", "Model", "Offer", "build_catalog", "provider_enabled", "sim_active"]
