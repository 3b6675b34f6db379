"""Data pipeline: llm.c shards (round trip, corrupted files rejected), sources and the
deterministic split, the DataLoader (determinism across restarts and world sizes), and the
`llmscratch tokenize` command end to end on a small source."""
import json
import os

import numpy as np
import pytest

import llmscratch
from llmscratch.data import (DataLoader, documents, in_validation, read_shard, shard_info,
                             split_documents, stdlib_files, write_shard)


# ----------------------------------------------------------------------------- shards
@pytest.mark.parametrize("width,top", [(2, 65535), (4, 1 << 20)])
def test_shard_round_trip(tmp_path, width, top):
    rng = np.random.default_rng(width)
    toks = rng.integers(0, top + 1, size=1001)
    p = tmp_path / "s.bin"
    assert write_shard(p, toks) == 1001
    assert shard_info(p) == (1001, width)
    back = read_shard(p)
    assert back.dtype == (np.uint16 if width == 2 else np.uint32)
    assert np.array_equal(back, toks)
    header = np.fromfile(p, dtype=np.int32, count=256)
    assert list(header[:3]) == ([20240520, 1, 1001] if width == 2 else [20240801, 7, 1001])
    assert not header[3:].any()
    assert [f.name for f in tmp_path.iterdir()] == ["s.bin"]  # no temp file left


def test_shard_reads_llmc_layout(tmp_path):
    # a shard written the way llm.c's data_common.write_datafile does
    toks = np.arange(500, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(toks)]
    p = tmp_path / "llmc.bin"
    with open(p, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.tobytes())
    assert np.array_equal(read_shard(p), toks)


def test_corrupted_shards(tmp_path):
    p = tmp_path / "c.bin"
    write_shard(p, np.arange(100))
    good = p.read_bytes()
    p.write_bytes(good[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_shard(p)
    p.write_bytes(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="bad magic"):
        read_shard(p)
    p.write_bytes(good[:10])
    with pytest.raises(ValueError, match="truncated header"):
        shard_info(p)
    bad_version = bytearray(good)
    bad_version[4] = 9
    p.write_bytes(bytes(bad_version))
    with pytest.raises(ValueError, match="version 9"):
        read_shard(p)
    with pytest.raises(ValueError, match="cannot open"):
        read_shard(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="does not fit uint16"):
        write_shard(p, [70000], token_bytes=2)
    with pytest.raises(ValueError, match="out of range"):
        write_shard(p, [-1])


# ----------------------------------------------------------------------------- sources
def test_stdlib_source():
    files = stdlib_files()
    assert len(files) > 300
    ids = [i for i, _ in files]
    assert ids == sorted(ids) and "os.py" in ids
    assert not any(i.startswith(("test/", "idlelib/idle_test/")) or "/test_" in i for i in ids)
    assert sum(os.path.getsize(p) for _, p in files) > 5_000_000


def test_split_is_deterministic_and_disjoint():
    train = split_documents("stdlib", "train", 0.05)
    val = split_documents("stdlib", "val", 0.05)
    alls = split_documents("stdlib", "all")
    t, v = {d.id for d in train}, {d.id for d in val}
    assert not (t & v) and t | v == {d.id for d in alls}
    assert 0.01 < len(v) / len(alls) < 0.12
    assert all(in_validation(i, 0.05) for i in v)
    assert {d.id for d in split_documents("stdlib", "val", 0.05)} == v


def test_a_source_too_small_for_the_document_split_is_split_within_its_documents(tmp_path):
    # One text file (or a few) can hash no document into validation: each document's tail is
    # validation then, from a line start, and the two parts together are the document.
    text = "".join(f"line {i}\n" for i in range(300))
    (tmp_path / "one.txt").write_text(text)
    src = str(tmp_path / "one.txt")
    assert not in_validation("one.txt", 0.05)
    train, val = split_documents(src, "train", 0.05), split_documents(src, "val", 0.05)
    assert [d.id for d in train] == ["one.txt#train"] and [d.id for d in val] == ["one.txt#val"]
    assert train[0].read() + val[0].read() == text
    assert val[0].read().startswith("line ") and 0.02 < len(val[0].read()) / len(text) <= 0.05
    assert split_documents(src, "val", 0.0) == [] and split_documents(src, "train", 0.0)[0].read() == text


def test_a_few_documents_keep_whole_documents_in_both_splits(tmp_path):
    # Five documents at 1%: the hash puts none in validation, so the one of lowest hash is.
    for i in range(5):
        (tmp_path / f"d{i}.txt").write_text(f"document {i}\n" * 10)
    assert not any(in_validation(f"d{i}.txt", 0.01) for i in range(5))
    train = split_documents(str(tmp_path), "train", 0.01)
    val = split_documents(str(tmp_path), "val", 0.01)
    assert len(train) == 4 and len(val) == 1
    assert sorted(d.id for d in train + val) == [f"d{i}.txt" for i in range(5)]
    assert all(d.read() == (tmp_path / d.id).read_text() for d in train + val)  # whole


def test_file_dir_glob_jsonl_sources(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("alpha")
    (tmp_path / "d" / "b.md").write_text("beta")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\0")
    assert [d.read() for d in documents(str(tmp_path / "d"))] == ["alpha", "beta"]
    assert [d.id for d in documents(str(tmp_path / "d" / "*.txt"))] == ["a.txt"]
    assert [d.read() for d in documents(str(tmp_path / "d" / "a.txt"))] == ["alpha"]
    j = tmp_path / "x.jsonl"
    j.write_text(json.dumps({"text": "one", "body": "uno"}) + "\n\n" + json.dumps({"text": "two", "body": "dos"}) + "\n")
    assert [d.read() for d in documents(str(j))] == ["one", "two"]
    assert [d.read() for d in documents(f"{j}:body")] == ["uno", "dos"]
    assert [d.id for d in documents(str(j))] == ["x.jsonl#1", "x.jsonl#3"]
    with pytest.raises(ValueError, match="no field"):
        list(documents(f"{j}:nope"))
    with pytest.raises(ValueError, match="not 'stdlib'"):
        list(documents(str(tmp_path / "nothing")))


# ----------------------------------------------------------------------------- loader
@pytest.fixture()
def shards(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, n in enumerate([1000, 577, 1500]):
        p = tmp_path / f"s_train_{i:06d}.bin"
        write_shard(p, rng.integers(0, 5000, size=n))
        paths.append(p)
    return tmp_path


def test_loader_batches_are_windows(shards):
    dl = DataLoader(shards, 4, 16, seed=1, as_numpy=True)
    data = [read_shard(p) for p in sorted(shards.glob("*.bin"))]
    assert dl.num_windows == sum((len(d) - 1) // 16 for d in data)
    b = dl.next_batch()
    assert b.shape == (4, 17) and b.dtype == np.int64
    streams = [np.asarray(d, dtype=np.int64) for d in data]
    for row in b:  # every row is a window of some shard starting at a multiple of T
        assert any(any(np.array_equal(s[j * 16:j * 16 + 17], row) for j in range((len(s) - 1) // 16))
                   for s in streams)
    dl.close()


def test_loader_tensor_output(shards):
    dl = DataLoader(shards, 2, 8, seed=0)
    t = dl.next_batch()
    assert isinstance(t, llmscratch.Tensor) and t.dtype == llmscratch.int64 and tuple(t.shape) == (2, 9)
    assert np.array_equal(t.numpy(), dl.batch_numpy(0))
    dl.close()


def test_loader_resume_and_epochs(shards):
    a = DataLoader(shards, 8, 16, seed=7, as_numpy=True)
    run = [a.next_batch() for _ in range(40)]  # several epochs (~190 windows)
    state = {"seed": 7, "step": 25}
    b = DataLoader(shards, 8, 16, seed=0, as_numpy=True)
    b.load_state_dict(state)
    for s in range(25, 40):
        assert np.array_equal(b.next_batch(), run[s])
    c = DataLoader(shards, 8, 16, seed=7, start_step=30, prefetch=0, as_numpy=True)
    assert np.array_equal(c.next_batch(), run[30])
    d = DataLoader(shards, 8, 16, seed=8, as_numpy=True)
    assert not np.array_equal(d.next_batch(), run[0])
    # each epoch visits every window exactly once, also across an epoch boundary in a batch
    n = a.num_windows
    one = DataLoader(shards, 1, 16, seed=7, prefetch=0, as_numpy=True)
    for epoch in range(3):
        seen = np.concatenate([one.windows(s) for s in range(epoch * n, (epoch + 1) * n)])
        assert sorted(seen.tolist()) == list(range(n))
    # a state resumes only a loader of the same layout; a loader's own state round-trips
    assert b.state_dict()["step"] == 40
    e = DataLoader(shards, 8, 16, seed=0, as_numpy=True, prefetch=0)
    e.load_state_dict(a.state_dict())
    assert (e.seed, e.step) == (7, 40)
    with pytest.raises(ValueError, match="another loader \\(batch_size: 8 -> 4; world_size: 1 -> 2\\)"):
        DataLoader(shards, 4, 16, world_size=2, as_numpy=True).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        e.load_state_dict({**a.state_dict(), "step": -1})
    # one rank's state serves every rank: each takes its own share of the same steps
    r1 = DataLoader(shards, 4, 16, seed=0, rank=1, world_size=2, prefetch=0, as_numpy=True)
    r1.load_state_dict(DataLoader(shards, 4, 16, seed=7, rank=0, world_size=2).state_dict())
    assert (r1.seed, r1.rank) == (7, 1)
    for x in (a, b, c, d):
        x.close()


def test_a_folder_of_both_splits_is_refused(shards, tmp_path):
    write_shard(shards / "s_val_000000.bin", np.arange(100))
    with pytest.raises(ValueError, match="holds the shards of both splits"):
        DataLoader(shards, 2, 8)
    assert DataLoader(str(shards / "*_train_*.bin"), 2, 8, prefetch=0).num_windows > 0
    # llm.c's unsharded names are splits too; a name that only contains "_val_" is not
    (tmp_path / "llmc").mkdir()
    for name in ("tiny_train.bin", "tiny_val.bin"):
        write_shard(tmp_path / "llmc" / name, np.arange(100))
    with pytest.raises(ValueError, match="holds the shards of both splits"):
        DataLoader(tmp_path / "llmc", 2, 8)
    (tmp_path / "one").mkdir()
    write_shard(tmp_path / "one" / "owt_val_subset_train_000000.bin", np.arange(100))
    assert DataLoader(tmp_path / "one", 2, 8, prefetch=0).num_windows > 0


def test_a_batch_larger_than_the_machine_is_refused_before_any_allocation(shards, monkeypatch):
    # Not left to numpy: where the OS overcommits, the allocation succeeds and filling it gets
    # the process killed.
    from llmscratch.data import loader
    _physical_memory = loader._physical_memory
    monkeypatch.setattr(loader, "_physical_memory", lambda: 2**30)
    with pytest.raises(MemoryError, match=r"a batch of 10000000 x 17 tokens needs 1.6 GiB, more than this machine's 1.0 GiB"):
        DataLoader(shards, 10_000_000, 16)
    assert DataLoader(shards, 1_000_000, 16, prefetch=0).B == 1_000_000  # 0.2 GiB: fits
    monkeypatch.setattr(loader.os, "sysconf", lambda name: -1)  # indeterminate: no check
    monkeypatch.setattr(loader, "_physical_memory", _physical_memory)
    assert loader._physical_memory() is None and DataLoader(shards, 10_000_000, 16, prefetch=0).B == 10_000_000


def test_a_dropped_loader_stops_its_thread(shards):
    import gc
    import weakref
    dl = DataLoader(shards, 2, 8, as_numpy=True)
    dl.next_batch()
    thread, ref = dl._thread, weakref.ref(dl)
    del dl
    gc.collect()
    thread.join(timeout=5)
    assert ref() is None and not thread.is_alive()


def test_loader_sequential(shards):
    dl = DataLoader(shards, 3, 10, shuffle=False, as_numpy=True, prefetch=0)
    first = read_shard(sorted(shards.glob("*.bin"))[0])
    b = dl.next_batch()
    assert np.array_equal(b[0], first[:11]) and np.array_equal(b[1], first[10:21])


def test_loader_world_sizes(shards):
    one = DataLoader(shards, 6, 16, seed=3, as_numpy=True, prefetch=0)
    ranks = [DataLoader(shards, 2, 16, seed=3, rank=r, world_size=3, as_numpy=True) for r in range(3)]
    for step in range(12):
        whole = one.next_batch()
        parts = np.concatenate([r.next_batch() for r in ranks])
        assert np.array_equal(whole, parts)
    for r in ranks:
        r.close()
    with pytest.raises(ValueError, match="rank"):
        DataLoader(shards, 2, 16, rank=3, world_size=3)
    with pytest.raises(ValueError, match="fewer than"):
        DataLoader(shards, 2, 5000)


# ----------------------------------------------------------------------------- CLI
def test_tokenize_cli(tmp_path, capsys):
    from llmscratch.cli import main
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.py").write_text(f"def f{i}(x):\n    return x * {i} + 'héllo wörld {i}'\n" * 20)
    out = tmp_path / "tok" / "t"
    assert main(["tokenize", "train", "--source", str(src), "--vocab-size", "300", "--out", str(out),
                 "--val-fraction", "0.2", "--quiet"]) == 0
    assert (tmp_path / "tok" / "t.tiktoken").exists()
    assert main(["tokenize", "encode", "--source", str(src), "--tokenizer", str(out),
                 "--out", str(tmp_path / "sh" / "src"), "--val-fraction", "0.2",
                 "--shard-size", "5000", "--quiet"]) == 0
    train = sorted((tmp_path / "sh").glob("src_train_*.bin"))
    val = sorted((tmp_path / "sh").glob("src_val_*.bin"))
    assert len(train) >= 2 and len(val) >= 1
    from llmscratch.tokenizer import Tokenizer
    tok = Tokenizer.load(out)
    toks = np.concatenate([read_shard(p) for p in val])
    assert toks[0] == tok.eot_token
    docs = [d.read() for d in split_documents(str(src), "val", 0.2)]
    assert tok.decode(toks) == "".join("<|endoftext|>" + d for d in docs)
    # encoding again to the same prefix in bigger shards replaces the whole set: no shard of the
    # first encode is left for a glob to pick up
    assert main(["tokenize", "encode", "--source", str(src), "--tokenizer", str(out),
                 "--out", str(tmp_path / "sh" / "src"), "--val-fraction", "0.2", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == ["src_train_000000.bin", "src_val_000000.bin"]
    np.testing.assert_array_equal(read_shard(tmp_path / "sh" / "src_val_000000.bin"), toks)
    assert main(["tokenize", "encode", "--source", str(tmp_path / "none"), "--tokenizer", str(out),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["tokenize", "train", "--source", str(src), "--vocab-size", "300", "--out", str(out),
                 "--threads", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "--threads must be 0" in err


def _small_python_source(tmp_path):
    """tmp_path/src: 30 small Python files, a source of a few shards at --shard-size 2000."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    return src


@pytest.mark.filterwarnings("ignore:Tokenizer.train")  # its small source allows few merges
def test_tokenize_encode_replaces_the_shards_all_or_nothing(tmp_path, monkeypatch):
    # An encode into a prefix that holds shards, interrupted at any rename of their publication,
    # leaves the earlier shards as they were; one killed there leaves a journal, which the next
    # encode into the prefix rolls back before its own.
    import subprocess
    import sys
    from llmscratch.cli import main
    from llmscratch.data import tokenize_cmd
    src = _small_python_source(tmp_path)
    assert main(["tokenize", "train", "--source", str(src), "--vocab-size", "300", "--out",
                 str(tmp_path / "tok"), "--quiet"]) == 0
    out = tmp_path / "sh" / "src"
    encode = ["tokenize", "encode", "--source", str(src), "--tokenizer", str(tmp_path / "tok"),
              "--out", str(out), "--quiet"]
    again = [*encode, "--val-fraction", "0.5"]  # other shards, none the same as before

    def shards():
        return {p.name: p.read_bytes() for p in (tmp_path / "sh").iterdir()}
    assert main([*encode, "--val-fraction", "0.2", "--shard-size", "2000"]) == 0
    before = shards()
    assert len(before) >= 4
    # publishing one shard a split: a journal, the earlier shards renamed aside, the new ones in
    rename, replace = os.rename, os.replace
    for k in range(1, len(before) + 4):
        calls = []

        def interrupted(move):
            def call(a, b):
                calls.append(a)
                if len(calls) == k:
                    raise KeyboardInterrupt
                move(a, b)
            return call
        monkeypatch.setattr(os, "rename", interrupted(rename))
        monkeypatch.setattr(os, "replace", interrupted(replace))
        assert main(again) == 130
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "replace", replace)
        assert shards() == before, k
    for k in (1, 3, len(before) + 3):
        killed = (f"import os\nfrom llmscratch.cli import main\ncalls = []\n"
                  f"def killed(move):\n    def call(a, b):\n        calls.append(a)\n"
                  f"        if len(calls) == {k}:\n            os._exit(9)\n"
                  f"        move(a, b)\n    return call\n"
                  f"os.rename, os.replace = killed(os.rename), killed(os.replace)\n"
                  f"main({again!r})\n")
        assert subprocess.run([sys.executable, "-c", killed]).returncode == 9
        assert any(".publish-" in name for name in shards())
        tokenize_cmd._recover(str(out))
        assert shards() == before, k
    assert main(again) == 0
    assert sorted(shards()) == ["src_train_000000.bin", "src_val_000000.bin"]


@pytest.mark.filterwarnings("ignore:Tokenizer.train")  # its small source allows few merges
def test_a_killed_publication_is_rolled_back_under_another_spelling_of_the_prefix(tmp_path, monkeypatch):
    # The journal names the shards by basename: an encode killed while publishing to data/tok
    # (relative to its working directory) is rolled back by one run elsewhere that spells the
    # prefix otherwise; the earlier shards come back whole, none of the new set stays.
    import argparse
    from llmscratch.cli import main
    from llmscratch.data import tokenize_cmd
    _small_python_source(tmp_path)  # src, named relative to tmp_path below
    monkeypatch.chdir(tmp_path)
    assert main(["tokenize", "train", "--source", "src", "--vocab-size", "300", "--out", "tok",
                 "--quiet"]) == 0
    encode = ["tokenize", "encode", "--source", "src", "--tokenizer", "tok", "--out", "data/tok",
              "--val-fraction", "0.2", "--quiet"]
    assert main([*encode, "--shard-size", "2000"]) == 0

    def shards():
        return {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    before = shards()
    assert len(before) >= 4 and all(not name.startswith(".") for name in before)
    # killed right after the first staged shard took its name: nothing after that runs (no roll
    # back in process)
    rename, staged = os.rename, []

    def killed(a, b):
        if ".tok.tmp-" in os.path.basename(a):
            if staged:
                raise SystemExit(9)
            staged.append(a)
        rename(a, b)
    monkeypatch.setattr(os, "rename", killed)
    monkeypatch.setattr(tokenize_cmd, "_roll_back", lambda prefix, pid: None)
    with pytest.raises(SystemExit):
        tokenize_cmd.encode(argparse.Namespace(source="src", val_fraction=0.2, threads=0, quiet=True,
                                               tokenizer="tok", out="data/tok", shard_size=3000))
    monkeypatch.undo()
    journal = [n for n in shards() if ".publish-" in n]
    assert len(journal) == 1 and staged
    assert all("/" not in n for v in json.loads((tmp_path / "data" / journal[0]).read_text()).values()
               for n in v)
    assert shards() != before  # a partial new set is published
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    tokenize_cmd._recover("../data/./tok")
    assert shards() == before
    # the same from an absolute spelling, with a journal as older versions wrote it (the paths
    # as the killed encode spelled them)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "rename", killed)
    monkeypatch.setattr(tokenize_cmd, "_roll_back", lambda prefix, pid: None)
    staged.clear()
    with pytest.raises(SystemExit):
        tokenize_cmd.encode(argparse.Namespace(source="src", val_fraction=0.2, threads=0, quiet=True,
                                               tokenizer="tok", out="data/tok", shard_size=3000))
    monkeypatch.undo()
    path = tmp_path / "data" / [n for n in shards() if ".publish-" in n][0]
    (path.write_text(json.dumps({k: [f"data/{n}" for n in v]
                                 for k, v in json.loads(path.read_text()).items()})))
    monkeypatch.chdir(tmp_path / "elsewhere")
    tokenize_cmd._recover(str(tmp_path / "data" / "tok"))
    assert shards() == before


@pytest.mark.filterwarnings("ignore:Tokenizer.train")  # its small source allows few merges
def test_tokenize_train_reads_documents_as_encode_does(tmp_path):
    # Files that are not valid UTF-8 (Latin-1 here) are trained on as encode reads them, invalid
    # bytes replaced by U+FFFD: the merges are those of the same texts saved as UTF-8 after that
    # replacement, with no raw byte (b"\xe9") that the shards never hold. A valid UTF-8 file
    # among them is read as it is. (`llmscratch train` prepares its data through the same path.)
    from llmscratch.cli import main
    from llmscratch.tokenizer import Tokenizer
    for name in ("latin", "replaced"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "utf8.txt").write_text("über straße\n" * 30, encoding="utf-8")
    for i in range(20):
        raw = f"café naïve résumé {i}\n".encode("latin-1") * 30
        (tmp_path / "latin" / f"d{i:02d}.txt").write_bytes(raw)
        (tmp_path / "replaced" / f"d{i:02d}.txt").write_text(raw.decode("utf-8", "replace"),
                                                             encoding="utf-8")
    for name in ("latin", "replaced"):
        assert main(["tokenize", "train", "--source", str(tmp_path / name), "--vocab-size", "300",
                     "--out", str(tmp_path / f"tok-{name}"), "--quiet"]) == 0
    assert ((tmp_path / "tok-latin.tiktoken").read_bytes()
            == (tmp_path / "tok-replaced.tiktoken").read_bytes())
    tok = Tokenizer.load(tmp_path / "tok-latin")
    learned = [tok.token_bytes(i) for i in range(256, tok.n_vocab - 1)]
    assert any("\ufffd".encode() in t for t in learned) and any("ü".encode() in t for t in learned)
    assert not any(b"\xe9" in t for t in learned)


def test_encode_removes_the_shard_temporaries_of_dead_processes(tmp_path):
    # write_shard writes a staged shard through SHARD.tmp.PID: one of a killed encode is removed
    # with its other leftovers; one of an encode that still runs is left alone.
    import subprocess
    import sys
    from llmscratch.data import tokenize_cmd
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = os.getppid()

    def leftovers(pid):
        return [f".tok.tmp-{pid}_{split}_000000.bin{end}"
                for split in ("train", "val") for end in ("", f".tmp.{pid}")]
    kept = [*leftovers(live), f".tok.tmp-{dead.pid}_train_000000.bin.tmp.x"]  # the last: not ours
    for name in leftovers(dead.pid) + kept:
        (tmp_path / name).write_bytes(b"")
    tokenize_cmd._recover(str(tmp_path / "tok"))
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
