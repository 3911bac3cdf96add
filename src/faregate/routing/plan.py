"""Turn a request into an ordered plan of attempts (model + provider offer)."""

from __future__ import annotations

from dataclasses import dataclass

from faregate.catalog.models import Catalog, Model, Offer
from faregate.errors import FaregateError, InvalidRequest, ModelNotFound
from faregate.types import ChatRequest


class ModelUnavailable(FaregateError):
    status = 503
    type = "service_unavailable"
    code = "model_unavailable"


@dataclass(slots=True, frozen=True)
class Candidate:
    model: Model
    offer: Offer

    def max_output(self, requested: int | None) -> int | None:
        """The request's max_tokens capped at the model's max output."""
        cap = self.model.max_output_tokens
        if requested is None:
            return None
        return min(requested, cap) if cap else requested


@dataclass(slots=True)
class Plan:
    route: str
    candidates: list[Candidate]


class Planner:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def resolve(self, name: str) -> Model:
        model = self.catalog.get(name)
        if model is None:
            suggestions = self.catalog.suggest(name)
            hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
            raise ModelNotFound(f"The model '{name}' does not exist.{hint}", param="model")
        return model

    def plan(self, request: ChatRequest) -> Plan:
        names: list[str] = request.body.get("models") or [request.model]
        models = [self.resolve(name) for name in names]
        candidates: list[Candidate] = []
        rejected: list[str] = []
        unavailable: list[str] = []
        for model in models:
            missing = model.missing_modalities(request.required_modalities)
            if missing:
                rejected.append(f"model '{model.name}' does not accept {' or '.join(missing)} input")
                continue
            offers = model.available_offers()
            if not offers:
                unavailable.append(model.name)
                continue
            # Cheapest offer first; the sort is stable, so equal prices keep config order.
            for offer in sorted(offers, key=lambda o: o.price.input + o.price.output):
                candidates.append(Candidate(model, offer))
        if not candidates:
            if rejected:
                raise InvalidRequest(
                    "The request contains content the model cannot read: " + "; ".join(rejected) + ".",
                    param="messages",
                    code="unsupported_modality",
                )
            providers = sorted({o.provider for m in models for o in m.offers})
            raise ModelUnavailable(
                f"No provider is available for {', '.join(unavailable)}: its providers "
                f"({', '.join(providers) or 'none'}) are disabled (API key not set)."
            )
        route = names[0] if len(names) == 1 else "list:" + ",".join(names)
        return Plan(route=route, candidates=candidates)
