"""The semantic cache through the gateway: paraphrases hit, near misses in meaning do not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from harness import GatewayProcess, SimProcess, cache_written, create_key, run_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def semantic_gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = "cache: {semantic: {enabled: true}}\n"
    with run_gateway(tmp_path_factory.mktemp("semantic"), sim, config) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client(semantic_gateway: GatewayProcess) -> openai.OpenAI:
    key = create_key(semantic_gateway.store_path, "semantic")
    return openai.OpenAI(base_url=semantic_gateway.base_url, api_key=key, max_retries=0, timeout=30)


def ask(client: openai.OpenAI, text: str, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
    )
    return str(raw.headers["x-faregate-cache"])


@pytest.fixture(scope="module")
def store(client: openai.OpenAI, semantic_gateway: GatewayProcess) -> Callable[..., None]:
    """Ask once (a miss) and wait until the answer is in the semantic index."""

    def store(text: str, system: str | None = None) -> None:
        with cache_written(semantic_gateway, "semantic_cache_writes"):
            assert ask(client, text, system) == "miss"

    return store


def test_paraphrase_is_a_semantic_hit(client: openai.OpenAI, store: Callable[..., None]) -> None:
    store("What is the capital of France?")
    assert ask(client, "What's the capital of France?") == "semantic-hit"
    store("How do I reverse a list in Python?")
    assert ask(client, "How can I reverse a Python list?") == "semantic-hit"


def test_guards_stop_near_misses(client: openai.OpenAI, store: Callable[..., None]) -> None:
    store("How many days are there in a leap year, in total?")
    store("Turn on dark mode in the settings app")
    store("Game of Thrones season 6 episode 3 plot summary")
    assert ask(client, "How many days are there in a normal year, in total?") != "semantic-hit"
    assert ask(client, "Turn off dark mode in the settings app") != "semantic-hit"
    assert ask(client, "Game of Thrones season 6 episode 1 plot summary") != "semantic-hit"


def test_system_prompt_is_part_of_the_scope(client: openai.OpenAI, store: Callable[..., None]) -> None:
    store("Summarise the plot of Hamlet in one line", system="You are terse.")
    assert ask(client, "Summarise the plot of Hamlet in one line", system="You are verbose.") == "miss"


def test_tenants_are_isolated(
    semantic_gateway: GatewayProcess, client: openai.OpenAI, store: Callable[..., None], tmp_path: Path
) -> None:
    store("How do I sort a dictionary by value in Python?")
    other = openai.OpenAI(
        base_url=semantic_gateway.base_url,
        api_key=create_key(semantic_gateway.store_path, "b"),
        max_retries=0,
    )
    assert ask(other, "How can I sort a Python dictionary by value?") == "miss"
    assert ask(client, "How can I sort a Python dictionary by value?") == "semantic-hit"
