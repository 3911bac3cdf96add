from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from faregate.catalog import Catalog, build_catalog
from faregate.cli import cost as cost_cli
from faregate.config import load_settings
from faregate.evals.costs.projection import (
    Saving,
    Workload,
    display_usd,
    format_share,
    monthly_cost,
    parse_share,
    parse_split,
    project,
    request_cost,
    split_cost,
)
from faregate.types import Price

GPT_4O = Price(Decimal("2.50"), Decimal("10.00"), cache_read=Decimal("1.25"))
FLASH = Price(Decimal("0.27"), Decimal("1.10"))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(load_settings())


def test_the_24_dollar_example_is_88_dollars_not_88_thousand(catalog: Catalog) -> None:
    # 9.6M input tokens at $2.50 per 1M = $24.00; 6.4M output at $10.00 per 1M = $64.00.
    gpt_4o = catalog.get("gpt-4o")
    assert gpt_4o is not None
    assert gpt_4o.list_price == GPT_4O
    month = Workload(requests_per_month=1, input_tokens=9_600_000, output_tokens=6_400_000)
    assert monthly_cost(gpt_4o.list_price, month) == Decimal("88.00")
    assert monthly_cost(gpt_4o.list_price, month) != Decimal(88_000)
    # The same tokens spread over 1,000 requests of 9,600 in + 6,400 out cost the same.
    spread = Workload(requests_per_month=1_000, input_tokens=9_600, output_tokens=6_400)
    assert monthly_cost(gpt_4o.list_price, spread) == Decimal("88.00")
    assert request_cost(GPT_4O, 9_600_000, 0) == Decimal("24.00")
    assert request_cost(GPT_4O, 0, 6_400_000) == Decimal("64.00")


def test_deepseek_v4_flash_request_costs_82_hundred_thousandths(catalog: Catalog) -> None:
    # 1,000 x $0.27/1M = $0.00027; 500 x $1.10/1M = $0.00055; total $0.00082.
    flash = catalog.get("deepseek-v4-flash")
    assert flash is not None
    assert request_cost(flash.list_price, 1_000, 500) == Decimal("0.00082")
    assert monthly_cost(flash.list_price, Workload(1, 1_000, 500)) == Decimal("0.00082")


def test_cache_hits_are_free_so_a_hit_rate_scales_cost_exactly() -> None:
    month = Workload(1_000, 9_600, 6_400, cache_hit_rate=Decimal("0.3"))
    # 700 billed requests x $0.088 = $61.60, with no float residue.
    assert month.billed_requests == Decimal(700)
    assert monthly_cost(GPT_4O, month) == Decimal("61.60")
    assert monthly_cost(GPT_4O, Workload(1_000, 9_600, 6_400, Decimal(1))) == 0
    # An odd count gives a fractional expected number of billed requests, still exact.
    odd = Workload(333, 1_000, 0, cache_hit_rate=Decimal("0.3"))
    assert monthly_cost(GPT_4O, odd) == Decimal("233.1") * Decimal("0.0025")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Workload(1, 1, 1, Decimal("1.5"))
    with pytest.raises(ValueError, match="negative"):
        Workload(-1, 1, 1)


def test_a_split_sums_exactly() -> None:
    month = Workload(1_000, 9_600, 6_400)
    prices = {"gpt-4o": GPT_4O, "flash": FLASH}
    shares = parse_split("gpt-4o=0.2, flash=0.8")
    # gpt-4o: $88.00 x 0.2 = $17.60.
    # flash: 1,000 x (9,600 x 0.27 + 6,400 x 1.10)/1M = $9.632; x 0.8 = $7.7056.
    assert monthly_cost(FLASH, month) == Decimal("9.632")
    total = split_cost(prices, shares, month)
    assert total == Decimal("25.3056")
    assert total == Decimal("0.2") * monthly_cost(GPT_4O, month) + Decimal("0.8") * monthly_cost(FLASH, month)
    # Quarters: 0.25 x $88 twice, plus half of $9.632.
    quarters = parse_split("a=0.25,b=0.25,c=0.5")
    three = {"a": GPT_4O, "b": GPT_4O, "c": FLASH}
    assert split_cost(three, quarters, month) == Decimal("44.00") + Decimal("4.816")
    saving = Saving.between(Decimal("88.00"), total)
    assert saving.amount == Decimal("62.6944")
    assert saving.share == Decimal("62.6944") / Decimal("88.00")


def test_split_parsing_rejects_what_would_misprice() -> None:
    assert parse_split("m1=70%,m2=30%") == {"m1": Decimal("0.7"), "m2": Decimal("0.3")}
    assert parse_split("org/model=1") == {"org/model": Decimal(1)}
    with pytest.raises(ValueError, match="sum to 1"):
        parse_split("a=0.7,b=0.2")
    with pytest.raises(ValueError, match="twice"):
        parse_split("a=0.5,a=0.5")
    with pytest.raises(ValueError, match="MODEL=SHARE"):
        parse_split("a0.5")
    with pytest.raises(ValueError, match="not a number"):
        parse_split("a=half")
    with pytest.raises(ValueError, match="no price"):
        split_cost({"a": GPT_4O}, {"a": Decimal("0.5"), "b": Decimal("0.5")}, Workload(1, 1, 1))
    assert parse_share("12.5%") == Decimal("0.125")


def test_money_is_rounded_for_display_and_shares_are_exact() -> None:
    # Cents from a dollar up; four significant digits below; never fewer than two decimals.
    assert display_usd(Decimal("88.00")) == "$88.00"
    assert display_usd(Decimal("88")) == "$88.00"
    assert display_usd(Decimal("0.00082")) == "$0.00082"
    assert display_usd(Decimal("1234567.5")) == "$1,234,567.50"
    assert display_usd(Decimal("-6.2496")) == "-$6.25"
    assert display_usd(Decimal("0.1313334")) == "$0.1313"
    assert display_usd(Decimal("0.00000436")) == "$0.00000436"
    assert display_usd(Decimal("0.5")) == "$0.50"
    assert display_usd(Decimal("0.999995")) == "$1.00"
    assert display_usd(Decimal(0).scaleb(-9)) == "$0.00"
    assert format_share(Decimal("0.3")) == "30%"
    assert format_share(Decimal("0.125")) == "12.5%"
    line = project("gpt-4o", GPT_4O, Workload(1, 9_600_000, 6_400_000))
    assert line.per_request == line.monthly == Decimal("88.00")


# -- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py will build it."""

    cost_cli.register(app)
    return app


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "faregate.yaml"
    path.write_text("catalog:\n  broad: false\n", encoding="utf-8")
    return str(path)


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "220"})


def test_cost_command_prints_exact_figures_and_saving(app: typer.Typer, config: str) -> None:
    args = (
        "cost", "--requests-per-month", "1000", "--input-tokens", "9600", "--output-tokens", "6400",
        "--model", "gpt-4o", "--model", "deepseek-v4-flash", "--split", "gpt-4o=0.2,deepseek-v4-flash=0.8",
        "--config", config,
    )  # fmt: skip
    rounded = run(app, *args)
    assert rounded.exit_code == 0, rounded.output
    assert "$88.00" in rounded.output and "$9.63 " in rounded.output and "$25.31 " in rounded.output
    assert "$9.632" not in rounded.output
    result = run(app, *args, "--exact")
    assert result.exit_code == 0, result.output
    assert "$88.00" in result.output
    assert "$9.632" in result.output
    assert "$25.3056" in result.output
    assert "saving vs gpt-4o" in result.output
    assert "$62.6944" in result.output  # split saving against the gpt-4o baseline
    assert "$78.368" in result.output  # flash saving: 88.00 - 9.632


def test_cost_command_cache_rate_and_provider_comparison(app: typer.Typer, config: str) -> None:
    result = run(
        app, "cost", "-n", "1", "-i", "1000", "-o", "500", "--model", "deepseek-v4-flash",
        "--baseline", "deepseek-v4-flash", "--compare-providers", "deepseek-v4-flash", "--config", config,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "$0.00082" in result.output
    # deepseek sells it at 0.15/0.60 (twice that at its peak hours): 1,000 x 0.15/1M + 500 x
    # 0.60/1M = $0.00045.
    assert "$0.00045" in result.output
    # And at its peak hours, 0.30/1.20: $0.00030 + $0.00060 = $0.0009.
    assert "deepseek-v4-flash at 01:00-04:00 06:00-10:00 UTC" in result.output
    assert "$0.0009 " in result.output
    # openrouter at 0.105/0.21: $0.000105 + $0.000105 = $0.00021.
    assert "$0.00021" in result.output
    halved = run(
        app, "cost", "-n", "1000", "-i", "9600", "-o", "6400", "-m", "gpt-4o", "--cache-hit-rate", "50%",
        "--config", config,
    )  # fmt: skip
    assert halved.exit_code == 0, halved.output
    assert "$44.00" in halved.output
    assert "500 billed" in halved.output


def test_one_request_a_month_is_said_in_the_singular(app: typer.Typer, config: str) -> None:
    one = run(app, "cost", "-n", "1", "-i", "1000", "-o", "500", "-m", "gpt-4o", "--config", config)
    assert one.exit_code == 0, one.output
    assert "1 request/month" in one.output and "requests/month" not in one.output
    many = run(app, "cost", "-n", "2", "-i", "1000", "-o", "500", "-m", "gpt-4o", "--config", config)
    assert "2 requests/month" in many.output


def test_cost_command_rejects_unknown_models_and_bad_splits(app: typer.Typer, config: str) -> None:
    unknown = run(app, "cost", "-n", "1", "-i", "1", "-o", "1", "-m", "gpt-4oo", "--config", config)
    assert unknown.exit_code == 2
    assert "unknown model 'gpt-4oo'" in unknown.output
    bad = run(app, "cost", "-n", "1", "-i", "1", "-o", "1", "--split", "gpt-4o=0.5", "--config", config)
    assert bad.exit_code == 2
    assert "sum to 1" in bad.output


def test_cost_tables_print_model_names_as_written() -> None:
    # A recorded model name is whatever a client asked for: "[bold]" in it was taken for rich
    # markup and vanished (and a "[/x]" raised MarkupError: a traceback).
    from rich.console import Console

    from faregate.cli.cost import _table
    from faregate.cli.cost_records_table import render
    from faregate.evals.costs.projection import Line
    from faregate.store.analytics_rows import Traffic

    console = Console(width=300, record=True)
    price = Price(Decimal(1), Decimal(2))
    console.print(render([Traffic("m[bold]", 1, 0, 10, 10, Decimal(1))], {"t[beta]": price}, "title"))
    line = Line("b[beta]", Decimal(1), Decimal(1), price)
    console.print(_table("title", "model", [("n[bold]", line)], line, lambda d: str(d)))
    text = console.export_text()
    assert "m[bold]" in text and "on t[beta]" in text and "n[bold]" in text and "vs b[beta]" in text
