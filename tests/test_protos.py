"""The generated protobuf modules are up to date with protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current() -> None:
    pytest.importorskip("grpc_tools")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_envelopes_decode_what_rust_encodes(tmp_path: Path) -> None:
    import ego

    store = ego.MemoryStore()
    e = ego.v1.Event(persistence_id="p", sequence_number=1, timestamp=5, shard=2, encryption_key_id="k", is_encrypted=True)
    e.event.type_url = "type.googleapis.com/x.Y"
    e.event.value = b"\x00\x01"
    e.metadata["a"] = "b"
    store.write_events([e])
    (back,) = store.replay_events("p")
    assert back.position == 1
    back.position = 0
    assert back == e
