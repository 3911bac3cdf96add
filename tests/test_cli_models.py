"""`faregate models`: the curated catalog by default, searches reach the broad one, and a search
that finds nothing says so instead of printing an empty table."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from faregate.cli.main import build_app


def run(tmp_path: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(tmp_path / 'store')!r}}}\n")
    result = CliRunner().invoke(build_app(), ["models", *args, "-c", str(config)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_curated_models_are_listed_and_a_search_reaches_the_broad_catalog(tmp_path: Path) -> None:
    code, output = run(tmp_path)
    assert code == 0 and "deepseek-ai/DeepSeek-V4-Flash" in output and "gpt-4o" in output
    code, output = run(tmp_path, "flash")
    assert code == 0 and "deepseek-ai/DeepSeek-V4-Flash" in output


def test_a_search_that_finds_nothing_says_so(tmp_path: Path) -> None:
    code, output = run(tmp_path, "nosuchthing")
    assert code == 1
    assert output.strip() == "faregate: no model matching 'nosuchthing'"
    code, output = run(tmp_path, "gpt-4oo")
    assert code == 1 and "did you mean" in output and "gpt-4o" in output


def test_names_with_brackets_are_printed_as_written(tmp_path: Path) -> None:
    # Names went through rich markup: "[beta]" was taken for a style and vanished.
    config = tmp_path / "faregate.yaml"
    config.write_text(
        f"store: {{path: {str(tmp_path / 'store')!r}}}\n"
        "providers: {offp: {base_url: 'http://127.0.0.1:1', api_key_env: FG_UNSET_KEY_X, enabled: false}}\n"
        "models:\n"
        "  'm[beta]': {input: 1, output: 2, aliases: ['a[bold]'], offers: [{provider: offp}]}\n"
    )
    result = CliRunner().invoke(build_app(), ["models", "m[", "-c", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "m[beta]" in result.output and "a[bold]" in result.output


def test_every_model_name_is_printed_whole(tmp_path: Path) -> None:
    # The model column was cut to fit 200 columns: "baseten/deepseek-ai/DeepSeek-V4.1-Flash-1017-F…",
    # 287 names of `--all` in all, names one types into a request or --model.
    from faregate.catalog import build_catalog
    from faregate.config import load_settings

    code, output = run(tmp_path, "deepseek")
    assert code == 0
    lines = output.splitlines()
    names = [
        m.name
        for m in build_catalog(load_settings(None)).all()
        if "deepseek" in " ".join((m.name, *m.aliases)).lower()
    ]
    assert len(names) > 20
    for name in names:
        assert any(f"│ {name} " in line for line in lines), name


def test_the_settings_a_model_refuses_and_its_efforts_are_listed(tmp_path: Path) -> None:
    """What GET /v1/models says of each model (refused_params, efforts) is in the table too: a
    newcomer choosing a model for a client that sends reasoning_effort sees which drop it."""
    code, output = run(tmp_path, "gpt-4o-mini")
    row = next(line for line in output.splitlines() if "│ gpt-4o-mini " in line)
    assert code == 0 and "reasoning_effort, verbosity" in row
    code, output = run(tmp_path, "claude-opus-4-5")
    row = next(line for line in output.splitlines() if "│ claude-opus-4-5 " in line)
    assert code == 0 and "low, medium, high" in row
