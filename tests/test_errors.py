"""Write failures as the file system, safetensors and torch report them become one WriteFailed with an errno."""

from __future__ import annotations

import errno
import pickle

from addrop_cli.errors import WriteFailed, write_failure


class SafetensorError(Exception):  # the Rust extension's type, matched by name
    pass


def test_each_writer_s_report_of_a_full_or_read_only_disk_gives_its_errno(tmp_path):
    # The messages below are what each writer printed on a full and on a read-only tmpfs (torch 2.13,
    # safetensors 0.8).
    cases = [
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
        (SafetensorError('Error while serializing: I/O error: Read-only file system (os error 30) at path "x"'),
         errno.EROFS),
        (RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only file "
                      "system"), errno.EROFS),
    ]
    for error, code in cases:
        failure = write_failure(error, tmp_path / "f")
        assert failure is not None and failure.code == code, error
        assert f"could not write {tmp_path / 'f'}: {errno.errorcode[code]}" in str(failure)


def test_an_errno_less_short_write_is_enospc_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr("addrop_cli.errors._free_bytes", lambda path: 1 << 20)
    assert write_failure(short, tmp_path / "f").code == errno.ENOSPC
    monkeypatch.setattr("addrop_cli.errors._free_bytes", lambda path: 1 << 40)
    roomy = write_failure(short, tmp_path / "f")
    assert roomy.code is None and "unexpected pos" in str(roomy)


def test_other_errors_are_not_write_failures(tmp_path):
    assert write_failure(ValueError("bad shape"), tmp_path) is None
    assert write_failure(RuntimeError("CUDA out of memory"), tmp_path) is None


def test_a_write_failure_survives_pickling_with_its_advice():
    failure = WriteFailed("/x/ckpt", errno.ENOSPC, "detail").advised("free some space")
    again = pickle.loads(pickle.dumps(failure))
    assert (again.path, again.code, str(again)) == ("/x/ckpt", errno.ENOSPC, str(failure))
