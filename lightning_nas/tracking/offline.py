"""Read back what a W&B *offline* run recorded (wandb ships no reader for its ``.wandb`` files).

Format (hand-written here because no library reads it): a 7-byte header ``b":W&B"`` + magic ``0xBEE1``
(little-endian uint16) + version byte, then LevelDB-log framing in 32 KiB blocks. Each chunk has a 7-byte
header: crc32 (uint32, zlib crc seeded with the type byte), payload length (uint16), type (1 FULL,
2 FIRST, 3 MIDDLE, 4 LAST). A block tail shorter than a header is zero padding. Reassembled payloads are
``wandb.proto.wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

_HEADER = b":W&B"
_MAGIC = 0xBEE1
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _find_run_file(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if not p.exists():
        raise FileNotFoundError(f"read_offline_run: {str(p)!r} does not exist")
    if p.is_file():
        if p.suffix != ".wandb":
            raise ValueError(f"read_offline_run: {str(p)!r} is not a .wandb run file")
        return p
    direct = sorted(p.glob("run-*.wandb"))
    if direct:
        return direct[-1]
    nested = sorted(p.glob("**/offline-run-*/run-*.wandb"), key=lambda f: f.stat().st_mtime)
    if nested:
        return nested[-1]
    raise FileNotFoundError(f"read_offline_run: no W&B offline run (run-*.wandb) under {str(p)!r}")


def _records(data: bytes, path: Path) -> list[bytes]:
    if len(data) < 7 or data[:4] != _HEADER or struct.unpack("<H", data[4:6])[0] != _MAGIC:
        raise ValueError(f"read_offline_run: {str(path)!r} does not start with a W&B header")
    out: list[bytes] = []
    pending: bytearray | None = None
    pos = 7
    while pos + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - (pos % _BLOCK)
        if left_in_block < _CHUNK_HEADER:  # zero padding at the block end
            pos += left_in_block
            continue
        crc, length, ctype = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        start, end = pos + _CHUNK_HEADER, pos + _CHUNK_HEADER + length
        if end > len(data):  # a record still being written
            break
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes([ctype]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"read_offline_run: checksum mismatch at byte {pos} of {str(path)!r}")
        pos = end
        if ctype == _FULL:
            out.append(bytes(payload))
        elif ctype == _FIRST:
            pending = bytearray(payload)
        elif ctype == _MIDDLE and pending is not None:
            pending += payload
        elif ctype == _LAST and pending is not None:
            pending += payload
            out.append(bytes(pending))
            pending = None
        elif ctype == 0 and length == 0:
            pos += _BLOCK - (pos % _BLOCK) if pos % _BLOCK else 0
    return out


def _put(target: dict, item: Any, value: Any) -> None:
    """Store ``value`` under the item's key; a ``nested_key`` (media dicts) rebuilds the nested dict."""
    if not item.nested_key:
        target[item.key] = value
        return
    *parents, leaf = list(item.nested_key)
    for part in parents:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[leaf] = value


def _key(item: Any) -> str:
    return item.nested_key[0] if item.nested_key else item.key


def _value(item: Any) -> Any:
    try:
        return json.loads(item.value_json)
    except (ValueError, TypeError, RecursionError):  # not JSON, or nested too deeply: the raw text
        return item.value_json


def _parsed_records(path: Path, timeout: float) -> list[Any]:
    """The records of ``path``, waiting up to ``timeout`` s for the ``exit`` record (warning if it never comes)."""
    from lightning_nas._compat import wandb_record_class

    record = wandb_record_class()
    deadline = time.monotonic() + timeout
    while True:
        recs = []
        for i, raw in enumerate(_records(path.read_bytes(), path)):
            r = record()
            try:
                r.ParseFromString(raw)
            except Exception as exc:
                raise ValueError(
                    f"read_offline_run: record {i} of {str(path)!r} is not a W&B record ({type(exc).__name__})"
                ) from None
            recs.append(r)
        done = any(r.WhichOneof("record_type") == "exit" for r in recs)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not done:
        warnings.warn(
            f"read_offline_run: {str(path)!r} has no exit record yet; the run may still be writing", stacklevel=3
        )
    return recs


def read_offline_run(run_dir: str | Path, timeout: float = 10.0) -> tuple[list[dict], dict, dict]:
    """Return ``(history, summary, config)`` recorded by a W&B offline run.

    Args:
        run_dir: an ``offline-run-*`` folder, a ``run-*.wandb`` file, or a folder holding them (the newest
            run found below it is read, e.g. the ``save_dir`` given to ``WandbLogger``).
        timeout: seconds to wait for the run's ``exit`` record (the file can lag ``wandb.finish()`` by a
            few ms). A run without one after that is read as it stands, with a warning.

    ``history`` is a list of dicts, one per ``run.log`` call (media as W&B's JSON descriptions, e.g.
    ``{"_type": "histogram", ...}``; an image's ``path`` is relative to the run's ``files`` folder).

    Examples:
        >>> import tempfile
        >>> import wandb
        >>> from lightning_nas.tracking import read_offline_run
        >>> folder = tempfile.mkdtemp()
        >>> run = wandb.init(mode="offline", dir=folder, project="demo", config={"lr": 0.01})
        >>> run.log({"val_acc": 0.5})
        >>> run.log({"val_acc": 0.75})
        >>> wandb.finish()
        >>> history, summary, config = read_offline_run(folder)  # the newest offline run below the folder
        >>> [row["val_acc"] for row in history], summary["val_acc"], config["lr"]
        ([0.5, 0.75], 0.75, 0.01)
    """
    path = _find_run_file(run_dir)
    recs = _parsed_records(path, timeout)
    history: list[dict] = []
    summary: dict = {}
    config: dict = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row: dict = {}
            for i in r.history.item:
                _put(row, i, _value(i))
            history.append(row)
        elif kind == "summary":
            for i in r.summary.update:
                _put(summary, i, _value(i))
            for i in r.summary.remove:
                summary.pop(_key(i), None)
        elif kind == "config":
            for i in r.config.update:
                _put(config, i, _value(i))
        elif kind == "run":
            for i in r.run.config.update:
                _put(config, i, _value(i))
    config = {
        k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v)
        for k, v in config.items()
        if not k.startswith("_wandb")
    }
    return history, summary, config
