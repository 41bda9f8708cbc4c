"""Bad input, tried as a new user would: each case ends with one clear line on stderr naming the
option typed and exit status 2 (130 for Ctrl-C), before any work, losing nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from imdb_jax.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`imdb-jax ARGV` in-process: (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's own errors
            status = exit.code if isinstance(exit.code, int) else 2
    return status, stdout.getvalue(), stderr.getvalue()


def _one_error_line(argv: list[str]) -> str:
    """Runs a command that must fail with status 2 and exactly one line on stderr; that line."""
    status, stdout, stderr = _run(argv)
    assert status == 2, stderr
    assert stdout == "" and "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"imdb-jax {argv[0]}: error: ")
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a command loads data or a model: the error must come first."""
    import imdb_jax.cli.study
    import imdb_jax.cli.train
    import imdb_jax.saved.loading

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(imdb_jax.cli.train, "load_data", refuse)
    monkeypatch.setattr(imdb_jax.cli.study, "load_data", refuse)
    monkeypatch.setattr(imdb_jax.saved.loading, "load_model", refuse)


# ---------------------------------------------------------------------------------------------
# Options checked before any work.


@pytest.mark.parametrize("command", ["train", "study", "evaluate"])
def test_a_huge_batch_size_is_refused_naming_the_option(command, no_work, tmp_path):
    argv = {
        "train": ["train", "--output", str(tmp_path / "run")],
        "study": ["study", "units", "--output", str(tmp_path / "run")],
        "evaluate": ["evaluate", "--model", str(tmp_path / "model")],
    }[command]
    line = _one_error_line([*argv, "--batch-size", "100000000"])
    assert line.endswith(
        "--batch-size must be at most 32768 (more than IMDb's 25,000 reviews in one batch), got 100000000"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"hidden_units": [16], "l2": "abc"}]', "variant 1: l2 must be a number, got 'abc'"),
        ('[{"dropout_rate": "0.5"}]', "variant 1: dropout_rate must be a number, got '0.5'"),
        ('[{"name": "half", "dropout_rate": "0.5"}]', "variant 1: dropout_rate must be a number, got '0.5'"),
        ('[{"seed": "abc"}]', "variant 1: seed must be an integer, got 'abc'"),
        ('[{"seed": 1.5}]', "variant 1: seed must be an integer, got 1.5"),
        ('[{"hidden_units": [16.5]}]', "variant 1: hidden_units must be a list of positive integers, got [16.5]"),
    ],
)
def test_spec_values_of_the_wrong_type_are_one_line(text, message, no_work, tmp_path):
    spec = tmp_path / "specs.json"
    spec.write_text(text)
    line = _one_error_line(["study", "--spec", str(spec), "--output", str(tmp_path / "run")])
    assert line == f"imdb-jax study: error: {spec}, {message}"


@pytest.mark.parametrize("command", ["train", "study"])
@pytest.mark.parametrize("output", ["/proc/x", "/sys/x", "/proc/x/y"])
def test_an_unwritable_output_is_refused_before_any_work(command, output, no_work):
    argv = ["train"] if command == "train" else ["study", "units"]
    line = _one_error_line([*argv, "--output", output])
    assert line.startswith(f"imdb-jax {command}: error: --output {output} cannot be written: ")


def test_an_output_that_is_a_file_is_refused(no_work, tmp_path):
    (tmp_path / "file").write_text("mine")
    line = _one_error_line(["train", "--output", str(tmp_path / "file")])
    assert "--output" in line and "not a folder" in line
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
        (["--l1", "nan"], "--l1 must be a finite number >= 0, got nan"),
        (["--hidden-units", "0,4"], "--hidden-units: widths must be positive, got [0, 4]"),
    ],
)
def test_model_settings_are_named_as_the_options_typed(options, message, no_work, tmp_path):
    line = _one_error_line(["train", "--output", str(tmp_path / "run"), *options])
    assert line == f"imdb-jax train: error: {message}"
    assert not (tmp_path / "run").exists()


def test_validation_is_named_as_the_option_typed(fake_aclimdb, tmp_path):
    line = _one_error_line(
        [
            "study",
            "units",
            "--data-dir",
            str(fake_aclimdb),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--validation",
            "6",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert (
        line == "imdb-jax study: error: --validation must be between 1 and 5 (the data has 6 training reviews), got 6"
    )
    assert "num_validation" not in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "study", "evaluate", "predict"])
def test_compile_cache_option_is_applied_before_anything_compiles(command, monkeypatch, tmp_path):
    from imdb_jax.train import compile_cache

    calls = []
    monkeypatch.setattr(compile_cache, "enable", lambda setting=None, force=False: calls.append((setting, force)))
    argv = {
        "train": ["train", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run")],
        "study": ["study", "units", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run")],
        "evaluate": ["evaluate", "--model", str(tmp_path)],
        "predict": ["predict", "--model", str(tmp_path), "text"],
    }[command]
    for options in (["--compile-cache", "off"], []):
        status, _, stderr = _run(
            [*argv, *options]
        )  # no data, or a folder without a model: found after the cache is set
        assert status == 2 and "Traceback" not in stderr
    assert calls == [("off", True), (None, False)]


# ---------------------------------------------------------------------------------------------
# predict: one output line per input line, nothing raw on the terminal.


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained model over five words (predictions are whatever its weights say)."""
    import jax

    from imdb_jax.config import ModelConfig
    from imdb_jax.data.text import Vocabulary
    from imdb_jax.saved.model_folder import save_model
    from imdb_jax.train.steps import create_train_state

    words = ("great", "awful", "film", "plot", "fun")
    config = ModelConfig(num_words=len(words), hidden_units=(4,))
    return save_model(
        tmp_path_factory.mktemp("tiny") / "model",
        create_train_state(jax.random.key(0), config),
        config,
        Vocabulary(words),
    )


STDIN = (
    b"great film\n"
    b"\n"
    b"awful\rplot\x0bfun\x0c\x1c\xc2\x85\xe2\x80\xa8 film\r\n"  # line breaks splitlines() knows, in one line
    b"\x1b[31mred\x1b[0m\n"  # a terminal escape sequence, no known word
    b"\xff\xfe great \xc3\n"  # not UTF-8
    b"zzz unknown words\n"
    b"   \n"
    b"last line without a newline"
)


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_predict_gives_one_line_per_input_line_in_order(tiny_model, monkeypatch):
    _stdin(monkeypatch, STDIN)
    status, stdout, stderr = _run(["predict", "--model", str(tiny_model)])
    assert status == 0, stderr
    lines = stdout.split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 8
    assert lines[0].endswith("great film") and lines[0].split()[1] in ("positive", "negative")
    assert lines[1].split() == ["-", "(empty", "review)"]
    assert lines[2].endswith(r"awful\rplot\x0bfun\x0c\x1c\x85\u2028 film") and float(lines[2].split()[0]) >= 0
    assert "(no known words)" in lines[3] and lines[3].endswith(r"\x1b[31mred\x1b[0m")
    assert lines[4].endswith("\ufffd\ufffd great \ufffd") and lines[4].split()[1] in ("positive", "negative")
    assert "(no known words)" in lines[5] and lines[5].endswith("zzz unknown words")
    assert "(empty review)" in lines[6]
    assert "(no known words)" in lines[7] and lines[7].endswith("last line without a newline")
    # Nothing reaches the terminal raw: no control, format or line-separator characters.
    assert not [
        char
        for char in stdout.replace("\n", "")
        if unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp")
    ]


def test_predict_json_keeps_every_line_and_marks_the_unscorable(tiny_model, monkeypatch):
    _stdin(monkeypatch, STDIN)
    status, stdout, stderr = _run(["predict", "--model", str(tiny_model), "--json"])
    assert status == 0, stderr
    assert len(stdout.splitlines()) == 1
    found = json.loads(stdout)["predictions"]
    assert [entry["text"] for entry in found] == [
        "great film",
        "",
        "awful\rplot\x0bfun\x0c\x1c\x85\u2028 film",
        "\x1b[31mred\x1b[0m",
        "\ufffd\ufffd great \ufffd",
        "zzz unknown words",
        "   ",
        "last line without a newline",
    ]
    assert [entry["known_words"] for entry in found] == [2, 0, 4, 0, 1, 0, 0, 0]
    assert [entry["note"] for entry in found] == [
        None,
        "empty review",
        None,
        "no known words",
        None,
        "no known words",
        "empty review",
        "no known words",
    ]
    assert all((entry["probability"] is None) == (entry["known_words"] == 0) for entry in found)
    assert all(ord(char) < 128 for char in stdout)  # JSON escapes everything else


def test_predict_explain_follows_each_scored_line_with_one_why_line(tiny_model, monkeypatch):
    """README: one line per input line, and with --explain one `why:` line after each scored one."""
    _stdin(monkeypatch, b"great film\n\nzzz unknown\nawful plot fun\n")
    status, stdout, stderr = _run(["predict", "--model", str(tiny_model), "--explain", "--top", "2"])
    assert status == 0, stderr
    lines = stdout.splitlines()
    assert [line.split()[0] == "why:" for line in lines] == [False, True, False, False, False, True]
    assert lines[0].endswith("great film") and "(empty review)" in lines[2] and "(no known words)" in lines[3]
    assert lines[4].endswith("awful plot fun") and len(lines[5].split(", ")) <= 2


def test_predict_arguments_get_the_same_treatment(tiny_model):
    status, stdout, _ = _run(["predict", "--model", str(tiny_model), "", "great\x1b[2J", "nothing known"])
    assert status == 0
    lines = stdout.splitlines()
    assert (
        len(lines) == 3
        and "(empty review)" in lines[0]
        and lines[1].endswith(r"great\x1b[2J")
        and "(no known words)" in lines[2]
    )


# ---------------------------------------------------------------------------------------------
# In a real process: --help without JAX, and Ctrl-C.


def _python(code: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, **options
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["study", "--help"],
        ["train", "--help"],
        ["train", "--epochs", "four"],
        ["predict"],
        # Values argparse accepts and the command refuses: checked before JAX is imported, also
        # by the commands that can run over several processes (joining one imports JAX).
        ["train", "--epochs", "-1"],
        ["train", "--dropout", "1.5"],
        ["train", "--ngrams", "0"],
        ["train", "--resume"],
        ["train", "--resume-anyway"],
        ["study", "units", "--resume-anyway"],
        ["study", "units", "--seeds", "0"],
        ["study", "--epochs", "-1"],
        ["study", "units", "--min-count", "0"],
        ["tune", "--validation", "0"],
        ["data", "--held-out", "-1"],
        ["data", "--num-words", "0"],
        ["predict", "--model", "tests/conftest.py", "text"],
        ["evaluate", "--model", "no-such-folder"],
    ],
)
def test_help_and_option_errors_do_not_import_jax(argv):
    code = (
        "import sys\n"
        "from imdb_jax.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "print('STATUS', status, 'JAX', 'jax' in sys.modules, [name for name in ('flax', 'optax', 'matplotlib', 'scipy') if name in sys.modules])\n"
    )
    result = _python(code)
    helpful = "--help" in argv or "--version" in argv
    assert result.stdout.splitlines()[-1] == f"STATUS {0 if helpful else 2} JAX False []", result.stderr
    if not helpful:
        assert ": error: " in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr, result.stderr


def test_the_cli_restates_the_feature_settings_it_checks():
    """The options are checked without importing `imdb_jax.data.features` (it imports SciPy)."""
    from imdb_jax.cli import _common
    from imdb_jax.data import features

    assert (_common.WEIGHTINGS, _common.MAX_NGRAMS) == (features.WEIGHTINGS, features.MAX_NGRAMS)


def test_version_names_the_package_version():
    from imdb_jax import __version__

    status, stdout, _ = _run(["--version"])
    assert status == 0 and stdout == f"imdb-jax {__version__}\n"


# ---------------------------------------------------------------------------------------------
# A closed standard output (`imdb-jax predict ... | head -1`) ends the command quietly.


def _with_stdout_closed(argv: list[str]) -> subprocess.CompletedProcess:
    """`python -m imdb_jax ARGV` writing into a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "imdb_jax", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=300,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_predict_into_a_closed_pipe_ends_quietly(tiny_model, json_output):
    done = _with_stdout_closed(
        [
            "predict",
            "--model",
            str(tiny_model),
            "--compile-cache",
            "off",
            "great film",
            "awful plot",
            *(["--json"] if json_output else []),
        ]
    )
    assert done.stderr == "" and done.returncode == 141  # 128 + SIGPIPE, as a shell reports `yes | head -1`


def _tiny_train(data_dir: Path, tmp_path: Path, *, epochs: int) -> list[str]:
    """`imdb-jax train` on the small fake aclImdb folder: a 4-unit model, batches of 2, no
    compilation cache."""
    return [
        "train",
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--compile-cache",
        "off",
        "--epochs",
        str(epochs),
        "--batch-size",
        "2",
        "--hidden-units",
        "4",
    ]


def test_train_into_a_closed_pipe_ends_quietly_with_its_model_saved(fake_aclimdb, tmp_path):
    done = _with_stdout_closed(
        [*_tiny_train(fake_aclimdb, tmp_path, epochs=1), "--output", str(tmp_path / "run"), "--no-progress"]
    )
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141
    assert (tmp_path / "run" / "model.json").is_file()


# `imdb-jax ARGV` as the program runs it, saying "guarded" on stderr once its Ctrl-C handling is in
# place: before that (Python starting, under load that can take seconds) Ctrl-C is Python's own.
# Python's own Ctrl-C handler first: a process a terminal starts has it, but one that a
# non-interactive shell starts in the background inherits SIGINT ignored (and so would every
# process of a test run started that way, making Ctrl-C a no-op there).
GUARDED = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import sys
from imdb_jax.cli import _interrupt, main
enter = _interrupt.Guard.__enter__
def announced(self):
    entered = enter(self)
    sys.stderr.write("guarded\\n")
    sys.stderr.flush()
    return entered
_interrupt.Guard.__enter__ = announced
sys.exit(main())
"""


def _interrupt(
    argv: list[str], cwd: Path, wait_for: bytes, delay: float
) -> tuple[subprocess.Popen, threading.Thread, bytearray]:
    """Starts `imdb-jax ARGV` (`GUARDED`), waits for `wait_for` on its stderr, then `delay`
    seconds, then sends SIGINT as Ctrl-C would; (the process, the thread reading its stderr,
    the stderr bytes so far)."""
    process = subprocess.Popen(
        [sys.executable, "-c", GUARDED, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    stream = process.stderr
    assert stream is not None
    seen = bytearray()
    ready = threading.Event()

    def read():
        for chunk in iter(lambda: os.read(stream.fileno(), 4096), b""):
            seen.extend(chunk)
            if wait_for in seen:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(timeout=180), bytes(seen)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    return process, reader, seen


def test_ctrl_c_exits_130_with_one_line_at_any_moment(fake_aclimdb, tmp_path):
    """Ctrl-C while JAX is imported and the data read, and twice during training: status 130,
    the last line "interrupted", never a segmentation fault or a traceback."""
    env_argv = _tiny_train(fake_aclimdb, tmp_path, epochs=1_000_000)
    moments = [
        ("early", [*env_argv, "--output", str(tmp_path / "early"), "--no-progress"], b"guarded\n", 0.5),
        ("training-a", [*env_argv, "--output", str(tmp_path / "training-a")], b"fit", 0.3),
        ("training-b", [*env_argv, "--output", str(tmp_path / "training-b")], b"fit", 1.5),
    ]
    seen_early = b""
    # One at a time: each interrupted process has the machine to itself, as a user's would.
    for name, argv, wait_for, delay in moments:
        process, reader, seen = _interrupt(argv, tmp_path, wait_for, delay)
        try:
            try:
                status = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name}: still running 120 s after Ctrl-C; its stderr: {bytes(seen)[-3000:]!r}")
            reader.join(timeout=10)
            stderr = bytes(seen).decode("utf-8", errors="replace")
            assert status == 130, (name, status, stderr)
            assert "Segmentation fault" not in stderr and "Traceback" not in stderr, stderr
            last = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
            assert last == "imdb-jax train: interrupted", stderr
            # Nothing but what --resume continues from: no half-written files.
            left = sorted(path.name for path in (tmp_path / name).iterdir()) if (tmp_path / name).exists() else []
            assert left in ([], ["checkpoint"]), left
            if name == "early":
                seen_early = bytes(seen)
        finally:
            if process.poll() is None:  # an interrupt that failed must not leave a training process behind
                process.kill()
                process.wait()
            reader.join(timeout=10)
            if process.stderr is not None:  # read to its end by the reader: close it (no ResourceWarning)
                process.stderr.close()
    assert seen_early == b"guarded\nimdb-jax train: interrupted\n"


# ---------------------------------------------------------------------------------------------
# The test suite itself: real-data tests fail, not skip, under CI.


def test_real_data_tests_fail_not_skip_under_ci(tmp_path):
    env = {**os.environ, "CI": "true", "TFDS_DATA_DIR": str(tmp_path / "no-data-here")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_cli_study.py::test_short_study_on_the_real_reviews",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode != 0 and "1 error" in result.stdout, result.stdout
    assert "real IMDb data not available" in result.stdout and "skipped" not in result.stdout


def test_ci_false_does_not_count_as_ci(monkeypatch):
    from conftest import _under_ci

    for value, expected in (("true", True), ("1", True), ("TRUE", True), ("false", False), ("0", False), ("", False)):
        monkeypatch.setenv("CI", value)
        assert _under_ci() is expected
    monkeypatch.delenv("CI")
    assert _under_ci() is False


def test_ctrl_c_while_the_compiled_libraries_load_is_held_until_they_have():
    """A KeyboardInterrupt raised while an extension module initialises crashed the interpreter
    (status -11 under load): inside `interrupts_held` Ctrl-C waits, then is raised at its end."""
    from imdb_jax.cli import _interrupt

    before = signal.getsignal(signal.SIGINT)
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with _interrupt.interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # Python would have raised by now, had the handler been its own
            reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGINT) == before  # restored
    with _interrupt.interrupts_held():  # no Ctrl-C: nothing raised
        pass


# A command run as the program, with a stand-in `train` that registers an exit handler of its
# own (as JAX and logging do once loaded), leaves output in the buffers and returns STATUS; an
# object only the interpreter's teardown would free says whether that teardown ran.
_ENDING = """
import atexit, sys
from pathlib import Path
import imdb_jax.cli.train as train
marker, status = Path(sys.argv[1]), int(sys.argv[2])
class TornDown:  # freed only by the interpreter's teardown, which a finished command skips
    def __del__(self):
        marker.with_suffix(".teardown").write_text("torn down")
kept = TornDown()
def run(args):
    atexit.register(lambda: marker.write_text("handler ran"))
    sys.stdout.write("x" * 100000)  # more than a pipe's buffer, left unflushed
    sys.stderr.write("last words")
    return status
train.run = run
from imdb_jax.cli import main
sys.argv[1:] = ["train"]
sys.exit(main())
"""


@pytest.mark.parametrize("status", [0, 3])
def test_the_program_ends_with_its_status_its_output_whole_and_every_exit_handler_run(tmp_path, status):
    marker = tmp_path / "marker"
    done = subprocess.run(
        [sys.executable, "-c", _ENDING, str(marker), str(status)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == status, done.stderr
    assert done.stdout == "x" * 100000 and done.stderr == "last words"
    assert marker.read_text() == "handler ran"
    assert not marker.with_suffix(".teardown").exists()  # the 0.4-0.5 s teardown was skipped


def test_a_crash_still_ends_with_a_traceback_and_status_1(tmp_path):
    crash = _ENDING.replace("return status\n", "raise RuntimeError('a bug')\n")
    done = subprocess.run(
        [sys.executable, "-c", crash, str(tmp_path / "marker"), "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 1
    assert "RuntimeError: a bug" in done.stderr and (tmp_path / "marker").read_text() == "handler ran"
