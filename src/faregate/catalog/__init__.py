"""Models, prices, aliases, capabilities; price lookup; cost math."""

from faregate.catalog.models import Catalog, Model, Offer, build_catalog, provider_enabled

__all__ = ["Catalog", "Model", "Offer", "build_catalog", "provider_enabled"]
