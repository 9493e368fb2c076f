"""Prompt files and the torchrun work split: no gap, no duplicate, same images as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from condiff.errors import InputError, LimitError
from condiff.prompt_file import parse_prompt_lines, read_prompt_file
from condiff.sharding import ShardFailure, chunks_for_rank, plan_chunks, run_sharded
from condiff.train.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]


def test_prompt_lines_expand_with_fixed_seeds_and_names():
    lines = ["# comment", "", "a cat face", '{"prompt": "a heart", "seed": 7, "n": 2, "guidance": 7.5}', "a turtle"]
    jobs = parse_prompt_lines(lines, base_seed=100, n=1)
    assert [(j.index, j.prompt, j.seed) for j in jobs] == [
        (0, "a cat face", 100), (1, "a heart", 7), (2, "a heart", 8), (3, "a turtle", 103)]
    assert jobs[1].options == {"guidance": 7.5} and jobs[0].options == {}
    assert [j.file_name for j in jobs] == ["00000.png", "00001.png", "00002.png", "00003.png"]


@pytest.mark.parametrize("line, needle", [
    ('{"prompt": "x", "stepz": 3}', "unknown key"),
    ('{"prompt": "x",', "not valid JSON"),
    ('{"negative": "x"}', "prompt"),
    ('{"prompt": "x", "n": 0}', "'n'"),
    ('{"prompt": "x", "steps": 2.5}', "whole number"),
    ('{"prompt": "x", "seed": "1"}', "seed"),
    ('{"prompt": 5}', "prompt"),
])
def test_bad_lines_name_their_line(line, needle):
    with pytest.raises(InputError, match=needle) as info:
        parse_prompt_lines(["ok", line], source="p.txt")
    assert "p.txt:2" in str(info.value)


def test_limits_and_empty_files(tmp_path):
    with pytest.raises(LimitError):
        parse_prompt_lines(['{"prompt": "x", "n": 11}'], max_jobs=10)
    with pytest.raises(InputError, match="no prompts"):
        parse_prompt_lines(["# only a comment", "  "])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        read_prompt_file(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_defaults_fill_only_what_a_line_leaves_out(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text('a\n{"prompt": "b", "steps": 9}\n', encoding="utf-8")
    jobs = read_prompt_file(f, defaults={"steps": 4, "guidance": None, "sampler": "ddim"})
    assert jobs[0].options == {"steps": 4, "sampler": "ddim"}
    assert jobs[1].options == {"steps": 9, "sampler": "ddim"}


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_chunks_partition_the_jobs_whatever_the_world_size(world, batch):
    lines = [f'{{"prompt": "p{i}", "n": {1 + i % 3}, "steps": {2 + i % 2}}}' for i in range(9)]
    jobs = parse_prompt_lines(lines)
    chunks = plan_chunks(jobs, batch)
    assert chunks == plan_chunks(jobs, batch)  # planned independently of the world size
    assert all(len(c) <= batch and len({j.batch_key() for j in c}) == 1 for c in chunks)
    seen = [j.index for r in range(world) for c in chunks_for_rank(chunks, r, world) for j in c]
    assert sorted(seen) == list(range(len(jobs)))  # no gap, no duplicate


def _fake_render(chunk):
    """Each image's pixels are a function of its own seed only (as with per-sample seeded noise)."""
    images = torch.stack([torch.full((3, 8, 8), (j.seed % 250) / 255.0) for j in chunk])
    return images, [{"prompt": j.prompt, "seed": j.seed} for j in chunk]


def test_rerun_skips_written_images_and_fills_gaps(tmp_path):
    jobs = parse_prompt_lines([f"p{i}" for i in range(5)], base_seed=10)
    calls = []

    def render(chunk):
        calls.append([j.index for j in chunk])
        return _fake_render(chunk)

    (rep,) = run_sharded(DistContext(), jobs, tmp_path, render, batch=2)
    assert sorted(rep.written) == [0, 1, 2, 3, 4] and calls == [[0, 1], [2, 3], [4]]
    (tmp_path / "00002.png").unlink()
    calls.clear()
    (rep,) = run_sharded(DistContext(), jobs, tmp_path, render, batch=2)
    assert calls == [[2, 3]] and rep.written == [2] and sorted(rep.skipped) == [0, 1, 3, 4]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["seed"] for m in manifest["images"]] == [10, 11, 12, 13, 14]


def test_a_failing_chunk_fails_the_run_and_keeps_finished_images(tmp_path):
    jobs = parse_prompt_lines([f"p{i}" for i in range(4)])

    def render(chunk):
        if chunk[0].index == 2:
            raise RuntimeError("out of memory")
        return _fake_render(chunk)

    with pytest.raises(ShardFailure, match="rank 0 of 1 failed on image 2: out of memory"):
        run_sharded(DistContext(), jobs, tmp_path, render, batch=2)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00000.png", "00001.png"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world: int, port: int, out: str, fail_rank: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    jobs = parse_prompt_lines([f"p{i}" for i in range(7)], base_seed=3)

    def render(chunk):
        if rank == fail_rank:
            raise RuntimeError("disk full")
        return _fake_render(chunk)

    try:
        reports = run_sharded(DistContext(rank, world, backend="gloo"), jobs, out, render, batch=2)
        results[rank] = sorted(i for r in reports for i in r.written)
    except ShardFailure as err:
        results[rank] = str(err)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fail_rank", [-1, 1])
def test_two_gloo_processes_split_once_and_report_failures(tmp_path, fail_rank):
    results = mp.Manager().dict()
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path), fail_rank, results), nprocs=2)
    if fail_rank < 0:
        assert results[0] == results[1] == list(range(7))
        single = tmp_path / "single"
        run_sharded(DistContext(), parse_prompt_lines([f"p{i}" for i in range(7)], base_seed=3), single,
                    _fake_render, batch=2)
        for i in range(7):
            a = np.asarray(Image.open(tmp_path / f"{i:05d}.png"))
            assert np.array_equal(a, np.asarray(Image.open(single / f"{i:05d}.png")))
    else:
        assert results[0] == results[1]
        assert "rank 1 of 2 failed on image 2: disk full" in results[0]


@pytest.mark.slow
def test_torchrun_generate_equals_one_process(tmp_path):
    """`condiff generate --prompts` under torchrun (2 gloo ranks) writes the single-process pixels."""
    prompts = tmp_path / "p.txt"
    prompts.write_text('a cat face, twemoji style\n{"prompt": "a red heart", "n": 2}\na green turtle\n',
                       encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    common = ["-m", "condiff.cli", "generate", "--prompts", str(prompts), "--steps", "2", "--device", "cpu"]
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "one" / f"{i:05d}.png"))
        b = np.asarray(Image.open(tmp_path / "two" / f"{i:05d}.png"))
        assert np.array_equal(a, b), f"image {i} differs between 1 and 2 processes"
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and sum(r["written"] for r in manifest["ranks"]) == 4
