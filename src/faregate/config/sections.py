"""The settings' types: one strict struct per section of the YAML file (faregate.config).

Unknown keys and bad values fail when the file is parsed (config.loading), with a message naming
the key and what was expected.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from faregate.route_config import RouteSettings

CONFIG_ENV = "FAREGATE_CONFIG"


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


# Bounds of the numeric settings, checked when the file is parsed (one line naming the setting): a
# zero or negative timeout fails every call at once, a negative retry count or window size is
# nonsense, and none of them was noticed until the traffic went wrong.
Seconds = Annotated[float, msgspec.Meta(gt=0)]  # a timeout or a TTL: 0 would expire at once
Delay = Annotated[float, msgspec.Meta(ge=0)]  # a wait that may be none
Count = Annotated[int, msgspec.Meta(ge=1)]  # a size, a window, a threshold of events


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4000
    max_body_bytes: int = 8 * 1024 * 1024
    # Whole-request deadline, across every attempt.
    request_timeout_s: Seconds = 600.0
    # Gateway processes sharing the port (`serve --workers`). None: one per core, no more than
    # the cgroup's CPU limit, or one when the simulator stands in for the providers
    # (server/workers.py).
    workers: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # The hot POSTs (chat completions, Messages, Responses, embeddings) served by the lean
    # httptools server (server/lean_http.py), every other request by aiohttp on the same port.
    lean_http: bool = True
    # A stop (SIGTERM, Ctrl-C) lets the requests in flight finish for this long; those still
    # running then (a long stream) are cut, each settled and recorded with what it relayed.
    drain_timeout_s: Seconds = 60.0

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the gateway at this address (an IPv6 one in brackets, as URLs
        write it: `http://::1:4000` is no URL)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


class StoreSettings(_Strict):
    # Directory for the embedded SQLite store.
    path: str = ".faregate"
    # Shared stores for several instances (both or neither): PostgreSQL holds keys, balances, the
    # ledger and request records; Redis holds reservations, rate-limit counters and key events.
    # e.g. postgresql://faregate:secret@db:5432/faregate and redis://cache:6379/0
    postgres_url: str | None = None
    redis_url: str | None = None
    postgres_pool_size: Annotated[int, msgspec.Meta(ge=1)] = 10
    # postgres_url is a pooler in transaction mode (PgBouncer's pool_mode = transaction, and the
    # like): a statement is not kept prepared on a server connection the next transaction may not
    # get, and no setting is sent at connect (PgBouncer refuses the parameters it does not know).
    postgres_transaction_pooling: bool = False
    # Connections to Redis per instance; a request waits for a free one rather than failing.
    redis_pool_size: Annotated[int, msgspec.Meta(ge=2)] = 64


class RecordsSettings(_Strict):
    # Both positive: a batch of 0 would never empty the buffer, and an interval of 0 would run the
    # writer's loop back to back without yielding, freezing the event loop (lifecycle.Periodic).
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 512
    flush_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.25
    # Records waiting beyond this are dropped with a warning instead of growing memory without bound.
    # At least one: 0 dropped every record.
    max_pending: Count = 200_000
    # While the store is up, a request that finds this many records waiting waits for the writer
    # to get back under it (at most BACKPRESSURE_MAX_WAIT_S) before its handler returns: past the
    # rate the store can write, clients are slowed down instead of the buffer growing with the
    # rate (~0.75 KiB a record: 4,096, eight batches, are ~3 MiB). 0: never wait.
    backpressure_pending: Annotated[int, msgspec.Meta(ge=0)] = 4096


class AuthSettings(_Strict):
    master_key_env: str = "FAREGATE_MASTER_KEY"
    # How long a verified key stays in the in-process cache before the store is asked again.
    # 0: ask the store every time.
    key_cache_ttl_s: Delay = 5.0


class ProviderSettings(_Strict):
    base_url: str
    # The wire protocol: "openai" (chat completions) or "anthropic" (Messages).
    protocol: Literal["openai", "anthropic"] = "openai"
    # Env var holding the API key. A provider whose key is not set is disabled.
    api_key_env: str | None = None
    # Enabled only when the key starts with this: a vendor channel that takes only its own kind
    # of key (e.g. Global API's Pro channel and its ga_pro_ keys).
    api_key_prefix: str | None = None
    # None: enabled iff its key is set (or it needs none). True/False force it.
    enabled: bool | None = None
    headers: dict[str, str] = {}
    connect_timeout_s: Seconds = 10.0
    # Time allowed for the response head (first byte) and for the whole call.
    first_byte_timeout_s: Seconds = 60.0
    total_timeout_s: Seconds = 600.0
    # Time a stream may go without sending anything (after its head, between chunks): a stalled
    # stream fails after this, not at the total timeout, leaving time to fall back (or, once
    # content was relayed, ending the client's stream with the error event).
    stream_idle_timeout_s: Seconds = 60.0
    # At least one (the pool's limits are the providers' sum and largest: registry.pool_limits).
    max_connections: Count = 1000
    # Sells every curated model under its own name at the model's list price (the simulator).
    serves_every_model: bool = False
    # Speaks OpenAI's Responses API at {base_url}/responses (protocol openai only): a request
    # that came in on /v1/responses is passed through to it natively instead of translated.
    responses: bool = False
    # The field the provider reads the output limit from: every request's limit (a chat
    # client's either field, a Messages client's max_tokens, a Responses client's
    # max_output_tokens) goes there. OpenAI's reasoning models refuse max_tokens; many other
    # OpenAI-wire servers read only it, and keep the fields as the client gave them.
    output_limit_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Takes one scale of efforts for every model it sells and maps it to each model itself (an
    # aggregator: OpenRouter's none to xhigh): the client's effort is sent as given, not fitted to
    # a model's efforts (ModelSettings.efforts), which are those of the model's own API.
    maps_efforts: bool = False


class PeakSettings(_Strict):
    """A dearer price an offer's provider bills at some hours of every day (DeepSeek's peak hours):
    a request is held and billed the price in force when it came (catalog/peak_hours.py)."""

    # UTC, "HH:MM-HH:MM" each, the end excluded; one may span midnight ("22:00-02:00").
    hours: list[str]
    # USD per 1M tokens in those hours; one not set is the offer's own (a cache price scaled
    # by the peak input price to the offer's, as an offer's is to the model's).
    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None


class OfferSettings(_Strict):
    provider: str
    # Model name the provider expects; defaults to the catalog name.
    upstream: str | None = None
    # USD per 1M tokens; default to the model's list price.
    input: Decimal | None = None
    output: Decimal | None = None
    # Prompt-cache prices (USD per 1M tokens). One the offer does not set is the model's, scaled
    # by the offer's input price to the model's where the offer has its own (catalog/models.py).
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    # Dearer prices at some hours of the day; None: one price at all hours.
    peak: PeakSettings | None = None
    dedicated: bool = False


class ModelSettings(_Strict):
    # "embedding": served by POST /v1/embeddings only, priced per 1M input tokens (output 0);
    # chat routes never pick one, and the embeddings endpoint picks nothing else.
    kind: Literal["chat", "embedding"] = "chat"
    input: Decimal | None = None
    output: Decimal | None = None
    # Prompt-cache reads, 5-minute and one-hour writes, USD per 1M tokens (types.Price says what
    # a missing one falls back to).
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    aliases: list[str] = []
    context_window: int = 128_000
    max_output_tokens: Count | None = None
    # Its calls' first-byte and stream idle timeouts, over those of whichever provider serves it
    # (ProviderSettings'): a reasoning model that thinks for minutes before its first token gets
    # longer ones without its provider's other models waiting as long on a hung call. Unset: the
    # provider's.
    first_byte_timeout_s: Seconds | None = None
    stream_idle_timeout_s: Seconds | None = None
    # `file`: the model reads `file` parts (PDFs), which a text-only model cannot.
    modalities: list[Literal["text", "image", "audio", "video", "file"]] = msgspec.field(
        default_factory=lambda: ["text"]
    )
    tags: list[str] = []
    offers: list[OfferSettings] = []
    # Whether the model takes reasoning settings (a chat client's reasoning_effort, a Responses
    # client's reasoning, a Messages client's output_config.effort; and verbosity, which the
    # models before gpt-5 refuse): false leaves them out of what it is sent (gpt-4o-mini refuses
    # them with a 400); unset sends them as given.
    reasoning: bool | None = None
    # False: the model refuses sampling settings (temperature, top_p, the penalties, logprobs,
    # top_logprobs, logit_bias), as OpenAI's reasoning models do; they are left out.
    sampling: bool = True
    # The reasoning efforts the model takes (o3: low, medium, high): a client's effort it does
    # not take is sent as the nearest it does, the least above, else its most
    # (wire/model_params.py). Unset: sent as the client gave it.
    efforts: (
        Annotated[
            list[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]],
            msgspec.Meta(min_length=1),
        ]
        | None
    ) = None


class BreakerSettings(_Strict):
    consecutive_failures: Count = 5
    # Also open when this share of the last `window` calls failed (once `min_calls` were seen);
    # above 0 (0 opened it on any call at all) and at most 1.
    error_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    window: Count = 20
    min_calls: Count = 10
    cooldown_s: Delay = 30.0
    # The breaker every key shares opens only on failures from at least this many API keys; each
    # key also has a breaker of its own per offer that opens on its own failures alone. So one key
    # whose requests fail (a blank answer to an empty prompt, a timeout it provoked) stops only
    # itself (routing.health).
    shared_min_keys: Annotated[int, msgspec.Meta(ge=1)] = 2


class RoutingSettings(_Strict):
    # Extra tries on the same offer before falling back to the next candidate.
    retries: Annotated[int, msgspec.Meta(ge=0)] = 1
    backoff_base_s: Delay = 0.1
    backoff_max_s: Delay = 2.0
    # A Retry-After longer than this moves on to the next candidate instead of waiting.
    max_retry_after_s: Delay = 5.0
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    # Moving latency statistics keep this many recent samples per offer.
    latency_window: Count = 200


class SemanticCacheSettings(_Strict):
    # Off by default: it loads a local embedding model (about 200 MB more memory, 0.5 s; the README).
    enabled: bool = False
    # Chosen from `faregate cache-eval` (see the README's cache section). A cosine similarity:
    # above 1 nothing is ever served, at or below 0 any neighbour is.
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.88
    # Conversations with more user turns than this are only cached exactly.
    max_turns: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    # Set: the threshold is calibrated on verified live lookups so that wrong answers served /
    # lookups stays under this bound (quality/cache_live.py); no semantic hit until evidence.
    max_wrong_hit_rate: float | None = None
    confidence: float = 0.95
    # The bound on wrong hits / lookups: "product" or "direct" (docs/quality-guarantee.md).
    bound: str = "product"
    # Start from the shipped offline calibration worth this many lookups (0: live evidence only).
    prior_lookups: int = 0
    # Share of served semantic hits verified by a fresh call after the response, and its cap.
    verify_hits: float = 0.05
    daily_usd_cap: Decimal = Decimal("5")
    # How a cached answer is compared with the fresh one: exact, numeric, final_answer, json,
    # embedding, or llm_judge (asks `judge_model` through the gateway; its calls are charged to the
    # daily cap, the unserved candidates' labels included).
    comparator: str = "exact"
    judge_model: str | None = None


class CacheSettings(_Strict):
    enabled: bool = True
    # Positive: an entry that expires as it is written is a cache that never serves.
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    # TTL by tier hint and by route (or model) name, overriding ttl_s.
    tier_ttl_s: dict[Literal["economy", "standard", "premium"], Seconds] = {}
    route_ttl_s: dict[str, Seconds] = {}
    # The longest TTL a client may ask for (a `faregate.cache.ttl_s` hint or Cache-Control max-age):
    # longer is cut to this, so no client pins entries in a shared Redis for years.
    max_ttl_s: Seconds = 7 * 24 * 3600.0
    # In-process store size; ignored with Redis.
    # At least one: a negative size made every cache write fail (logged, never stored).
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # The largest entry kept, in bytes of the stored answer, in process or in Redis: a bigger answer
    # is served, not kept (nor its semantic entry). Entries are counted, not sized, in process, and
    # a Redis shared with the accounts must not fill with a few huge answers. The default holds an
    # answer of 128 KiB (about 30,000 tokens of text) with what is stored beside it.
    max_entry_bytes: Annotated[int, msgspec.Meta(ge=1)] = 128 * 1024 + 1024
    # Shared exact cache for several instances, e.g. redis://127.0.0.1:6379/0.
    redis_url: str | None = None
    semantic: SemanticCacheSettings = msgspec.field(default_factory=SemanticCacheSettings)


class CatalogSettings(_Strict):
    # Load the broad catalog (thousands of models) from the bundled genai-prices snapshot.
    broad: bool = True


class SimSettings(_Strict):
    """Whether and where the provider simulator stands in for the providers. When it does, it is
    the provider `sim` like any other (providers/registry.py: with_simulator)."""

    # auto: start the simulator when no provider key is set.
    mode: Literal["auto", "on", "off"] = "auto"
    # False: use a simulator already running at host:port instead of starting one.
    launch: bool = True
    host: str = "127.0.0.1"
    # 0: a free port, chosen when the gateway starts the simulator (launch: true); with launch:
    # false, the port of the simulator already running.
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # Optional YAML script (latency, answers, faults per model); see faregate.sim.script. A relative
    # path is relative to the config file.
    script: str | None = None
    # Timeouts the gateway applies to the simulated provider (they become providers.sim's).
    first_byte_timeout_s: Seconds = 60.0
    total_timeout_s: Seconds = 600.0
    stream_idle_timeout_s: Seconds = 60.0


class MetricsSettings(_Strict):
    # False: GET /metrics needs the master key (Authorization: Bearer <master key>), like /admin.
    # True: anyone who can reach the port may scrape it (put the gateway behind a firewall then).
    public: bool = False


class TracingSettings(_Strict):
    """OpenTelemetry traces over OTLP/HTTP (needs the `otel` extra): one span per request and one
    per upstream attempt. Off while otlp_endpoint is unset."""

    # The collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces.
    otlp_endpoint: str | None = None
    service_name: str = "faregate"
    headers: dict[str, str] = {}
    # Share of requests traced (0..1).
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0


AlertMetric = Literal[
    "p99_latency_ms",
    "error_rate",
    "fallback_rate",
    "satisfaction",
    "daily_spend_usd",
    # Calibrated routes (routes.NAME.quality), per route: quality/alerts.py.
    "quality_margin",
    "router_flagged",
    "verification_cap_reached",
    # The semantic cache's calibrated acceptance (cache.semantic.max_wrong_hit_rate), not per anything.
    "cache_verification_cap_reached",
]
AlertDimension = Literal["route", "model", "provider", "key"]
CACHE_ALERTS = ("cache_verification_cap_reached",)
QUALITY_ALERTS = ("quality_margin", "router_flagged", "verification_cap_reached", *CACHE_ALERTS)


class AlertRule(_Strict):
    """One alert: a metric over the last `window_minutes`, compared with `above` or `below`.

    error_rate, fallback_rate and satisfaction are percentages (0-100; satisfaction maps thumbs
    up to 100, down to 0 and ratings 1..5 to 0, 25, 50, 75, 100). daily_spend_usd is the spend of
    each key since 00:00 UTC (window_minutes is ignored). `per` evaluates the rule once per route,
    model, provider or key; route/model/provider/key narrow it to one of them.
    """

    name: str
    metric: AlertMetric
    above: float | None = None
    below: float | None = None
    per: AlertDimension | None = None
    route: str | None = None
    model: str | None = None
    provider: str | None = None
    # A key id or a key name.
    key: str | None = None
    window_minutes: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # The condition must hold this long (over consecutive evaluations) before the alert fires.
    for_minutes: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Fewer requests (or feedback scores) than this in the window: not enough evidence, no alert.
    min_count: Annotated[int, msgspec.Meta(ge=1)] = 10


class WebhookSettings(_Strict):
    # Every alert that fires or resolves is POSTed here as JSON.
    url: str
    timeout_s: Seconds = 5.0
    headers: dict[str, str] = {}


class AlertSettings(_Strict):
    # How often the rules are evaluated.
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    webhook: WebhookSettings | None = None
    rules: list[AlertRule] = []


PerMinute = Annotated[int, msgspec.Meta(ge=1)]


class TierLimits(_Strict):
    """Default rate limits of one key tier; a key's own limits replace them. None: unlimited."""

    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None


# Each tier's defaults are its fields' own, so that a config naming one limit keeps the other
# (a `standard: {requests_per_minute: 100}` lifted the token limit); null makes one unlimited.
class StandardTier(TierLimits):
    requests_per_minute: PerMinute | None = 600
    tokens_per_minute: PerMinute | None = 1_000_000


class PremiumTier(TierLimits):
    requests_per_minute: PerMinute | None = 6000
    tokens_per_minute: PerMinute | None = 10_000_000


class LimitsSettings(_Strict):
    """Bounds on what one chat request may ask for; anything beyond is a 400 (server.request_checks)."""

    # Choices per request (`n`): the reservation holds n times the worst case of one.
    max_n: Annotated[int, msgspec.Meta(ge=1)] = 16
    # Models in a request's `models` fallback list.
    max_models: Annotated[int, msgspec.Meta(ge=1)] = 10
    # Length of a model or route name a request may give.
    max_model_name_chars: Annotated[int, msgspec.Meta(ge=8)] = 256
    # Nesting of JSON objects and arrays in any request body (JSON schemas of tools included).
    max_json_depth: Annotated[int, msgspec.Meta(ge=8, le=200)] = 100
    # Image, audio, video and file URLs that name a loopback, private, link-local or otherwise
    # non-public address (or a scheme other than http, https, data) are refused with 400, so a
    # self-hosted upstream that fetches URLs cannot be pointed at its own network. True: forward
    # them untouched (an upstream on a private network serving private media).
    allow_private_media_urls: bool = False


class AccountsSettings(_Strict):
    """Credits, budgets and rate limits per API key (see docs/accounts.md)."""

    # False: every key may spend without limit (nothing is reserved or counted).
    enabled: bool = False
    # Credits granted to every newly created key (USD; credits never expire).
    new_key_credits_usd: Decimal = Decimal(0)
    standard: StandardTier = msgspec.field(default_factory=StandardTier)
    # Keys with the fg_pro_ prefix.
    premium: PremiumTier = msgspec.field(default_factory=PremiumTier)
    # A reservation not settled within this many seconds (its process died) is released.
    # Default: server.request_timeout_s + 60, so a live request never loses its hold.
    hold_ttl_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # How often expired reservations are looked for (admission also skips them on its own).
    sweep_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Shared stores: how often ledger entries move from Redis to PostgreSQL.
    ledger_flush_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.1
    # Every serving process holds a lease it renews every third of this; its reservations belong
    # to it, and once the lease has lapsed (the process was killed) any instance releases them.
    instance_lease_s: Annotated[float, msgspec.Meta(ge=3)] = 15.0
    # A settlement the store could not take when its request ended (an outage) is kept in memory
    # and retried for this long; on Redis, settled holds are remembered this long (plus a minute)
    # so that a retry of one that did land is not charged twice.
    settle_retry_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    # Kept settlements are also written to a spool file here (fsync'd), so that a process killed
    # during an outage loses none: the next one to start retries them. null: <store.path>/settle-spool.
    settle_spool_path: str | None = None
    # How tokens are counted where no upstream reported usage (billed as estimated), for
    # reservations and count_tokens: "light" estimates without a vocabulary (nothing to load;
    # counts over o200k by ~8-19% on average), "tokenizer" counts with the exact o200k BPE
    # (~58 MiB of RSS per process, shared by `serve --workers N`). faregate.usage_estimate.
    usage_estimate: Literal["light", "tokenizer"] = "light"


class UpstreamQueueSettings(_Strict):
    """A bound on concurrent calls to one provider; callers beyond it wait in a priority queue
    (premium keys first) and get 429 when the wait passes `timeout_s` or the queue is full. Quality
    verifications' calls have `verification_slots` of their own beyond `max_concurrent`, so they
    never hold a slot a user could need (routing/queue.py)."""

    max_concurrent: Annotated[int, msgspec.Meta(ge=1)]
    max_queued: Annotated[int, msgspec.Meta(ge=0)] = 1000
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    verification_slots: Annotated[int, msgspec.Meta(ge=0)] = 1


class Settings(_Strict):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    records: RecordsSettings = msgspec.field(default_factory=RecordsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    catalog: CatalogSettings = msgspec.field(default_factory=CatalogSettings)
    sim: SimSettings = msgspec.field(default_factory=SimSettings)
    routing: RoutingSettings = msgspec.field(default_factory=RoutingSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    baseline_model: str = "gpt-4o"
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelSettings] = {}
    routes: dict[str, RouteSettings] = {}
    accounts: AccountsSettings = msgspec.field(default_factory=AccountsSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    # Per provider name; providers not listed are not limited.
    upstream_limits: dict[str, UpstreamQueueSettings] = {}

    def master_key(self) -> str | None:
        # Without the whitespace around it: a value filled from a file often ends in a newline,
        # which no Authorization header can carry (admin was locked out without a word).
        return (os.environ.get(self.auth.master_key_env) or "").strip() or None
