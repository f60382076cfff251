"""The node helper's one command runner: argv only, timeouts that kill the whole group, one-line
errors with secrets masked."""
import os
import sys
import time

import pytest

from tm_iscsi.node import run
from tm_iscsi.node.errors import NodeError


def test_success_returns_text_and_runs_in_c_locale():
    result = run.run([sys.executable, "-c", "import os; print(os.environ['LC_ALL'])"])
    assert result.ok and result.returncode == 0
    assert result.stdout.strip() == "C"


def test_argv_must_be_a_list_of_str():
    with pytest.raises(TypeError):
        run.run("echo hi; reboot")
    with pytest.raises(TypeError):
        run.run(["echo", 3])
    with pytest.raises(NodeError, match="NUL"):
        run.run(["echo", "a\0b"])


def test_failure_is_one_line_with_the_reason_and_the_command():
    with pytest.raises(NodeError) as err:
        run.run([sys.executable, "-c",
                 "import sys; print('  warning first\\n  Volume group \"x\" not found\\n',"
                 " file=sys.stderr); sys.exit(5)"], what="reading volume group x")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("reading volume group x failed: Volume group \"x\" not found")
    assert "exit 5" in message


def test_accepted_exit_codes_and_check_false():
    argv = [sys.executable, "-c", "import sys; sys.exit(15)"]
    assert run.run(argv, ok=(0, 15)).returncode == 15
    assert run.run(argv, check=False).returncode == 15
    with pytest.raises(NodeError):
        run.run(argv)


def test_input_is_passed_on_stdin():
    result = run.run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
                     input="abc")
    assert result.stdout.strip() == "ABC"


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    script = (f"import os, subprocess, sys, time\n"
              f"p = subprocess.Popen(['sleep', '30'])\n"
              f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
              f"time.sleep(30)\n")
    start = time.monotonic()
    with pytest.raises(NodeError, match="timed out after 1s"):
        run.run([sys.executable, "-c", script], timeout=1, what="slow thing")
    assert time.monotonic() - start < 10
    child = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # A killed child stays a zombie until its reaper (init) collects it.
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":
                break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived the timeout")


def test_missing_program_says_so():
    with pytest.raises(NodeError, match="not installed"):
        run.run(["tm-iscsi-no-such-program"], what="doing things")


def test_secrets_are_masked_in_errors():
    with pytest.raises(NodeError) as err:
        run.run([sys.executable, "-c", "import sys; print('bad pw s3cret', file=sys.stderr);"
                 " sys.exit(1)", "s3cret"], secrets=["s3cret"])
    assert "s3cret" not in str(err.value) and "******" in str(err.value)


def test_run_progress_splits_carriage_returns():
    seen = []
    script = ("import sys, time\n"
              "for p in (10, 55.5, 100):\n"
              "    sys.stdout.write(f'    ({p}/100%)\\r'); sys.stdout.flush()\n"
              "print()\n")
    run.run_progress([sys.executable, "-c", script], seen.append)
    assert seen == ["(10/100%)", "(55.5/100%)", "(100/100%)"]


def test_run_progress_failure_and_timeout():
    with pytest.raises(NodeError, match="convert failed: boom"):
        run.run_progress([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); "
                          "sys.exit(1)"], lambda _: None, what="convert")
    start = time.monotonic()
    with pytest.raises(NodeError, match="timed out"):
        run.run_progress(["sleep", "30"], lambda _: None, timeout=1)
    assert time.monotonic() - start < 10


def test_info_goes_to_stderr(capsys):
    run.info("working")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "INFO: working\n"


def test_one_line_errors_converts_environment_failures_only():
    def fails_with(exc):
        def func(args):
            raise exc
        return run.one_line_errors("lv-write", func)

    with pytest.raises(NodeError, match=r"^lv-write: No such file or directory \(/dev/v/l\)$"):
        fails_with(FileNotFoundError(2, "No such file or directory", "/dev/v/l"))(None)
    rtslib_error = type("RTSLibError", (Exception,), {"__module__": "rtslib_fb.utils"})
    with pytest.raises(NodeError, match="^lv-write: LIO: configfs said no$"):
        fails_with(rtslib_error("configfs said no"))(None)
    with pytest.raises(ValueError):  # a bug keeps its traceback
        fails_with(ValueError("bug"))(None)
    assert run.one_line_errors("x", lambda args: {"ok": args})(1) == {"ok": 1}
