"""Atomic writes (fmsweep/files.py) by several writers of one file at once, as two `fmsweep resume` of a sweep
rewrite its sweep.json together: every write succeeds, the file always holds one writer's whole content, and no
temporary file is left behind."""

from __future__ import annotations

import threading
from pathlib import Path

from fmsweep.files import atomic_write

WRITERS = 4
WRITES = 200  # each; one shared temporary name failed within the first dozen writes on 2 cores


def test_writers_of_one_file_at_once_never_fail_and_leave_one_whole_content(tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    contents = [f'{{"writer": {w}, "pad": "{"x" * (1000 * (w + 1))}"}}' for w in range(WRITERS)]
    errors: list[BaseException] = []
    seen: set[str] = set()
    start = threading.Barrier(WRITERS + 1)

    def write(content: str) -> None:
        start.wait()
        try:
            for _ in range(WRITES):
                atomic_write(path, content)
        except BaseException as exc:  # noqa: BLE001 (collected: the test reports every writer's failure)
            errors.append(exc)

    def read() -> None:
        start.wait()
        while any(t.is_alive() for t in threads):
            if path.exists():
                seen.add(path.read_text())

    threads = [threading.Thread(target=write, args=(c,)) for c in contents]
    for thread in threads:
        thread.start()
    reader = threading.Thread(target=read)
    reader.start()
    for thread in [*threads, reader]:
        thread.join()
    assert not errors, errors[:3]
    assert path.read_text() in contents
    assert seen <= set(contents)
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]
