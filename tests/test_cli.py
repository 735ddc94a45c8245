"""The `blockllm` command as a user runs it: real processes, real files, clear errors."""

import subprocess
import sys

import pytest


def run(*args, env_zoo=None, check=True):
    p = subprocess.run([sys.executable, "-m", "blockllm.cli", *args], capture_output=True,
                       text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def assert_user_error(p, *words):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), p.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def zoo(tmp_path):
    return str(tmp_path / "zoo")


def test_add_ls_show_verify_generate_rm_gc(zoo):
    out = run("zoo", "add", "dummy:tiny@1", "--name", "a", "--zoo", zoo).stdout
    assert "added a: 6 blocks in its chain, 6 new" in out
    out = run("zoo", "add", "dummy:tiny@1", "--name", "b", "--zoo", zoo).stdout
    assert "0 new to the zoo" in out
    ls = run("zoo", "ls", "--zoo", zoo).stdout
    assert ls.count("blocks=  6") == 2 and "2 models, 6 distinct blocks" in ls
    show = run("zoo", "show", "b", "--zoo", zoo).stdout
    assert "decoder" in show and "head" in show and "unique to b 0 B" in show
    assert "ok: 6 blocks verified" in run("zoo", "verify", "--zoo", zoo).stdout
    a = run("generate", "a", "hello", "--max-tokens", "8", "--zoo", zoo).stdout
    b = run("generate", "b", "hello", "--max-tokens", "8", "--zoo", zoo).stdout
    assert a == b, "same blocks, same greedy output"
    run("zoo", "rm", "a", "--zoo", zoo)
    assert "deleted 0 blocks" in run("zoo", "gc", "--zoo", zoo).stdout


def test_user_errors_are_one_line_without_traceback(zoo, tmp_path):
    assert_user_error(run("generate", "nope", "hi", "--zoo", zoo, check=False), "no zoo")
    run("zoo", "add", "dummy:tiny", "--name", "t", "--zoo", zoo)
    assert_user_error(run("generate", "nope", "hi", "--zoo", zoo, check=False),
                      "no model 'nope'", "models: t")
    assert_user_error(run("zoo", "add", str(tmp_path / "missing"), "--name", "x", "--zoo", zoo,
                          check=False), "no such file")
    (tmp_path / "w.bin").write_bytes(b"x")
    assert_user_error(run("zoo", "add", str(tmp_path / "w.bin"), "--name", "x", "--zoo", zoo,
                          check=False), "unknown file format")
    assert_user_error(run("zoo", "add", "dummy:tiny", "--name", "t", "--zoo", zoo, check=False),
                      "already in the zoo")
    assert_user_error(run("generate", "t", "x" * 1100, "--max-tokens", "10", "--zoo", zoo,
                          check=False), "context length")
    assert_user_error(run("zoo", "show", "ghost", "--zoo", zoo, check=False), "ghost")
    for servers, says in [("a,b", "devices per server"), ("1,2", "add up to devices")]:
        assert_user_error(run("serve", "--models", "t", "--devices", "2", "--servers", servers,
                              "--zoo", zoo, check=False), says)
    # corrupt a block: verify exits 1 naming it, generate refuses with a one-line error
    from blockllm.zoo.store import Zoo
    z = Zoo(zoo)
    bid = z.chain("t")[1].block
    path = z.block_path(bid)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    v = run("zoo", "verify", "--zoo", zoo, check=False)
    assert v.returncode == 1 and bid[:12] in v.stderr and "used by: t" in v.stderr
    assert_user_error(run("generate", "t", "hi", "--zoo", zoo, check=False), bid[:12],
                      "hash check")


@pytest.mark.slow
def test_generate_embedded_needs_no_zoo(tmp_path):
    p = run("generate", "embedded", "The capital of France is", "--max-tokens", "4")
    assert p.stdout.strip().startswith("Paris"), p.stdout
    chat = run("generate", "embedded", "Say hello.", "--chat", "--max-tokens", "6")
    assert chat.stdout.strip() and "<|im_start|>" not in chat.stdout
