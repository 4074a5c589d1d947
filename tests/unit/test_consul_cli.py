"""ccr_gateway.consul_cli: `ccr-gateway policy push|get|diff|validate` against the Consul double.

The commands are synchronous (urllib) and the double serves from this test's event loop, so each
command runs in a thread."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccr_gateway import consul_cli
from tests.consul_double import ConsulDouble, running_double
from tests.unit.cp_helpers import EXAMPLE_POLICY

VALID = EXAMPLE_POLICY.read_text()
OTHER = VALID.replace("port: 8080", "port: 8081")
INVALID = "providers:\n  - name: a\n    api: nope\n    base_url: http://h\n    models: [m]\n"
KEY = "ccr-gateway/policy"


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with running_double(acl_token="t0ken") as running:
        yield running


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ccr-gateway policy")
    consul_cli.add_arguments(parser)
    return parser.parse_args(argv)


async def policy(double: ConsulDouble, *argv: str) -> int:
    args = parse(*argv[:1], "--consul", double.url, "--token", "t0ken", *argv[1:])
    assert args.func is consul_cli.run
    return await asyncio.to_thread(consul_cli.run, args)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("valid", VALID), ("other", OTHER), ("invalid", INVALID)):
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_text(text)
    return out


async def test_push_validates_then_writes_the_policy_key(double: ConsulDouble, files, capsys):
    assert await policy(double, "push", str(files["valid"])) == 0
    assert double.get(KEY) == VALID.encode()
    assert f"pushed {files['valid']} to consul:{KEY}" in capsys.readouterr().out
    assert await policy(double, "push", str(files["valid"])) == 0
    assert "nothing pushed" in capsys.readouterr().out


async def test_an_invalid_policy_is_refused_before_anything_is_written(double: ConsulDouble, files, capsys):
    assert await policy(double, "push", str(files["invalid"])) == 2
    err = capsys.readouterr().err
    assert "not pushed" in err and f"{files['invalid']}:3:10: providers[0].api" in err
    assert double.get(KEY) is None


async def test_a_push_based_on_a_stale_read_fails_and_shows_what_changed(double: ConsulDouble, files, capsys):
    first = double.put(KEY, VALID)
    double.put(KEY, OTHER)  # someone else pushed after we read `first`
    assert await policy(double, "push", str(files["valid"]), "--cas", str(first)) == 3
    err = capsys.readouterr().err
    assert "changed by someone else" in err
    assert "-  port: 8081" in err and "+  port: 8080" in err  # the diff: stored -> ours
    assert double.get(KEY) == OTHER.encode()


async def test_cas_zero_only_creates(double: ConsulDouble, files, capsys):
    assert await policy(double, "push", str(files["valid"]), "--cas", "0") == 0
    assert await policy(double, "push", str(files["other"]), "--cas", "0") == 3
    assert double.get(KEY) == VALID.encode()


async def test_the_default_cas_is_the_modify_index_just_read(double: ConsulDouble, files, capsys):
    double.put(KEY, VALID)
    assert await policy(double, "push", str(files["other"])) == 0
    assert double.get(KEY) == OTHER.encode()
    put_queries = [q for _, m, p, q in double.requests if m == "PUT" and p == "/v1/kv/" + KEY]
    assert put_queries[-1].startswith("cas=")


async def test_get_prints_the_policy_and_its_modify_index(double: ConsulDouble, tmp_path, capsys):
    index = double.put(KEY, VALID)
    assert await policy(double, "get") == 0
    out, err = capsys.readouterr()
    assert out == VALID and f"ModifyIndex {index}" in err
    target = tmp_path / "out.yaml"
    assert await policy(double, "get", "-o", str(target)) == 0
    assert (
        target.read_text()
        == f"# consul-modify-index: {index} (from `ccr-gateway policy get`; push checks it)\n" + VALID
    )


async def test_a_file_fetched_with_get_remembers_its_base_so_a_later_push_cannot_clobber(
    double: ConsulDouble, tmp_path, capsys
):
    double.put(KEY, VALID)
    mine = tmp_path / "mine.yaml"
    assert await policy(double, "get", "-o", str(mine)) == 0
    mine.write_text(mine.read_text().replace("port: 8080", "port: 9999"))
    double.put(KEY, OTHER)  # a colleague pushed meanwhile
    capsys.readouterr()
    assert await policy(double, "push", str(mine)) == 3
    assert "changed by someone else" in capsys.readouterr().err
    assert double.get(KEY) == OTHER.encode()
    # after looking at the diff, they take the colleague's version as the base and push again
    assert await policy(double, "get", "-o", str(mine)) == 0
    mine.write_text(mine.read_text().replace("port: 8081", "port: 9999"))
    assert await policy(double, "push", str(mine)) == 0
    assert double.get(KEY) == OTHER.replace("port: 8081", "port: 9999").encode()  # the marker is not stored
    # the file now records the index it wrote, so the same editor can keep pushing
    mine.write_text(mine.read_text().replace("port: 9999", "port: 9998"))
    assert await policy(double, "push", str(mine)) == 0
    assert b"port: 9998" in (double.get(KEY) or b"")
    assert await policy(double, "diff", str(mine)) == 0  # the marker is not part of the policy


async def test_get_assembles_split_keys_and_says_so(double: ConsulDouble, capsys):
    double.put("ccr-gateway/providers/a", "api: anthropic\nbase_url: http://127.0.0.1:1\nmodels: [m]\n")
    assert await policy(double, "get") == 0
    out, err = capsys.readouterr()
    assert 'providers:\n  -\n    name: "a"\n' in out and "assembled from split keys" in err


async def test_get_without_a_policy_fails(double: ConsulDouble, capsys):
    assert await policy(double, "get") == 1
    assert "no policy under consul:ccr-gateway/" in capsys.readouterr().err


async def test_diff_shows_consul_to_local_and_exits_one_when_different(double: ConsulDouble, files, capsys):
    double.put(KEY, VALID)
    assert await policy(double, "diff", str(files["other"])) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"--- consul:{KEY}\n+++ {files['other']}\n")
    assert "-  port: 8080\n+  port: 8081\n" in out
    assert await policy(double, "diff", str(files["valid"])) == 0


async def test_validate_checks_the_stored_policy_or_a_local_file(double: ConsulDouble, files, capsys):
    double.put(KEY, VALID)
    assert await policy(double, "validate") == 0
    assert f"consul:{KEY}: valid (2 providers, 3 models)" in capsys.readouterr().out
    double.put(KEY, INVALID)
    assert await policy(double, "validate") == 2
    assert f"consul:{KEY}:3:10: providers[0].api" in capsys.readouterr().out
    assert await policy(double, "validate", str(files["valid"])) == 0
    double.delete(KEY)
    double.put("ccr-gateway/router", "default: nope,x\n")
    assert await policy(double, "validate") == 2
    assert "consul:ccr-gateway/router:1:10: router.default" in capsys.readouterr().out


async def test_a_wrong_token_or_an_unreachable_consul_is_a_clear_error(double: ConsulDouble, files, capsys):
    args = parse("get", "--consul", double.url, "--token", "wrong")
    assert await asyncio.to_thread(consul_cli.run, args) == 1
    assert "403" in capsys.readouterr().err
    args = parse("get", "--consul", "http://127.0.0.1:1")
    assert await asyncio.to_thread(consul_cli.run, args) == 1
    assert "cannot reach Consul at http://127.0.0.1:1" in capsys.readouterr().err


async def test_address_and_token_default_to_the_consul_environment(double: ConsulDouble, monkeypatch, capsys):
    double.put(KEY, VALID)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", double.url.removeprefix("http://"))
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "t0ken")
    assert await asyncio.to_thread(consul_cli.run, parse("get")) == 0
    assert capsys.readouterr().out == VALID
