"""`make run` on a fresh clone installs the core only (`pip install -e .`), while this suite runs
with every extra installed. So the gateway and the simulator it launches are started here with
the extras' packages truly unimportable (a `sitecustomize` on PYTHONPATH hides them in every
process, the launched simulator included) and every wire is asked once: a core module importing
an extra's package (the simulator's embeddings once imported numpy, and `make run` died at start)
fails this test."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from faregate.extras import EXTRAS
from harness import clean_env, free_port, wait_healthy, wait_until

pytestmark = pytest.mark.e2e

EXTRA_PACKAGES = {module.split(".")[0] for extra in EXTRAS.values() for module in extra.modules}
HIDDEN = sorted(EXTRA_PACKAGES | {"anthropic"})

SITECUSTOMIZE = """
import sys
from importlib.abc import MetaPathFinder

HIDDEN = {hidden!r}


class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Hide())
"""


def test_the_core_install_serves_every_wire_with_no_extra(tmp_path: Path) -> None:
    assert {"numpy", "scipy", "onnxruntime", "asyncpg", "redis", "openai"} <= set(HIDDEN)
    hider = tmp_path / "hider"
    hider.mkdir()
    (hider / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=HIDDEN))
    port = free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(f"server: {{port: {port}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n")
    env = {**clean_env(), "PYTHONPATH": str(hider)}
    check = subprocess.run(
        [sys.executable, "-c", "import numpy"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "No module named 'numpy'" in check.stderr  # the hider works in a child process
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli.main", "serve", "--new-key", "-c", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path=log)
            wait_until(lambda: "print(reply" in log.read_text(), "the quickstart text is printed")
            text = log.read_text()
            key_match = re.search(r"API key \(shown once[^)]*\): (fg-\S+)", text)
            assert key_match, text
            key, master = key_match.group(1), env["FAREGATE_MASTER_KEY"]
            base = f"http://127.0.0.1:{port}"
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
            ask = [{"role": "user", "content": "hello core"}]
            reply = client.chat.completions.create(model="deepseek-v4-flash", messages=ask)  # type: ignore[arg-type]
            assert reply.choices[0].message.content == "hello core"
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=ask, stream=True)  # type: ignore[arg-type]
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "hello core"
            vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
            assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 1536
            answer = client.responses.create(model="gpt-4o-mini", input="hello core")
            assert answer.output_text == "hello core"
            claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
            message = claude.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=ask)  # type: ignore[arg-type]
            assert message.content[0].text == "hello core"  # type: ignore[union-attr]
            admin = {"Authorization": f"Bearer {master}"}
            pages = ("/dashboard", "/metrics", "/admin/dashboard/summary", "/admin/quality", "/openapi.json")
            for path in pages:
                assert httpx.get(base + path, headers=admin).status_code == 200, path
            assert "Traceback" not in log.read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
