"""``umec bench data``: the data path at scale, on generated Criteo TSV files.

For each row count: write a gzip Criteo TSV (timed), time ``zcat FILE | wc -l`` (the reading
floor), run ``umec prepare`` in a child process (time, rows/s, peak RSS of the child), then
train on the prepared directory on each number of ranks (a child per run, ``torchrun`` for
more than one rank) and report per rank: samples/s of ``--steps`` training steps drawing
batches from the memory-mapped data, samples/s of as many steps on batches generated in
memory (the ``umec bench train`` method: the compute ceiling) with the same model and batch
size, in alternating blocks of :data:`ALTERNATE_STEPS` steps (drift in the machine's load hits
both alike), the peak RSS, the data's peak (the most resident memory, anonymous plus file-backed,
seen between two of the data's batches, less the resident memory before the data was first
read: what the data adds to the model and optimizer), and the data memory: the growth of
the rank's resident memory from before the data was first read to the end of the steps,
anonymous and file-backed pages apart (file-backed pages are the page cache of the maps: reclaimable, and shared by the
ranks), and the growth of its proportional set size (PSS: a page the ranks share counts
1/k in each of k ranks), the rank's share of the machine's memory.

Ratios printed: prepare's and training's peak RSS from the smallest to the largest row
count (target: at most 1.2x, flat in rows; with a vocabulary that grows with the rows the
model grows too, so the data's peak is printed beside it), each rank's data memory on 2 ranks against 1
rank (target: at most 0.6x; resident and PSS), training samples/s on the prepared data against the ceiling
(target: at least 0.8x).
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["DEFAULT_ROWS", "write_criteo_tsv_fast", "run_data_bench", "rank_worker", "ratios", "add_parser"]

#: per-column cardinalities of the generated categoricals (capped by the row count)
_CARD = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306,
         10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def write_criteo_tsv_fast(path: str, rows: int, seed: int = 0, chunk_rows: int = 100_000, workers: int = 1) -> str:
    """A gzip (level 1) Criteo TSV of ``rows`` generated lines, written chunk by chunk with numpy
    string operations: labels 0/1 (CTR 0.25), 13 counts (15 % missing), 26 hex ids drawn
    Zipf-like from per-column vocabularies of the Kaggle cardinalities (capped by ``rows``).
    ``workers > 1``: that many processes write parts (gzip members) that are concatenated."""
    if workers > 1 and rows >= 2 * workers:
        import multiprocessing

        cuts = np.linspace(0, rows, workers + 1).astype(int)
        parts = [f"{path}.part{k}" for k in range(workers)]
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            pool.starmap(write_criteo_tsv_fast, [(q, int(cuts[k + 1] - cuts[k]), seed * 1000 + k + 1, chunk_rows)
                                                 for k, q in enumerate(parts)])
        with open(path, "wb") as out:
            for q in parts:
                with open(q, "rb") as f:
                    shutil.copyfileobj(f, out)
                os.remove(q)
        return path
    rng = np.random.default_rng(seed)
    with gzip.open(path, "wt", compresslevel=1, encoding="ascii") as f:
        for a in range(0, rows, chunk_rows):
            m = min(chunk_rows, rows - a)
            cols = [(rng.random(m) < 0.25).astype(np.int8).astype(str)]
            for _ in range(13):
                v = rng.geometric(0.02, size=m).astype(str)
                cols.append(np.where(rng.random(m) < 0.15, "", v))
            for j in range(26):
                card = max(2, min(_CARD[j], rows))
                ids = np.minimum((rng.pareto(1.2, size=m) * card / 20).astype(np.int64), card - 1)
                h = np.char.mod("%08x", (ids * 2654435761 + j) % (1 << 32))
                cols.append(np.where(rng.random(m) < 0.05, "", h))
            line = cols[0]
            for c in cols[1:]:
                line = np.char.add(np.char.add(line, "\t"), c)
            f.write("\n".join(line.tolist()))
            f.write("\n")
    return path


def _peak_rss_child(cmd: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run ``cmd``: its wall seconds, output and peak RSS (bytes; from ``wait4``: the largest of the
    child and its waited descendants). ``RuntimeError`` with the tail of stderr when it fails."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    import threading

    def pump(src: Any, dst: Any) -> None:
        shutil.copyfileobj(src, dst)

    ts = [threading.Thread(target=pump, args=(p.stdout, out_f)), threading.Thread(target=pump, args=(p.stderr, err_f))]
    for t in ts:
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    for t in ts:
        t.join()
    secs = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({p.returncode}): {err.strip()[-1500:]}")
    return {"seconds": secs, "stdout": out, "stderr": err, "peak_rss": int(ru.ru_maxrss) * 1024}


#: ``/proc/self/status`` fields (kB) -> the keys of :func:`_mem`
_STATUS = {"RssAnon:": "rss_anon", "RssFile:": "rss_file", "VmHWM:": "hwm"}
#: ``/proc/self/smaps_rollup`` fields (kB) -> the keys of :func:`_mem`
_ROLLUP = {"Pss_Anon:": "pss_anon", "Pss_File:": "pss_file"}


def _read_kib(path: str, keys: Dict[str, str], out: Dict[str, int]) -> Dict[str, int]:
    """Set ``out[keys[field]]`` to each ``field``'s value of the ``/proc`` file ``path`` in
    bytes (left as it is where the file cannot be read); returns ``out``."""
    try:
        with open(path) as f:
            for line in f:
                k = line.split(None, 1)[0]
                if k in keys:
                    out[keys[k]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _mem() -> Dict[str, int]:
    """This process's memory now (bytes): resident ``rss_anon`` / ``rss_file``, the peak ``hwm``
    and the proportional set sizes ``pss_anon`` / ``pss_file`` (a page mapped by k processes
    counts 1/k in each: the ranks' shared page cache of one prepared directory is split)."""
    out = {"rss_anon": 0, "rss_file": 0, "hwm": 0, "pss_anon": 0, "pss_file": 0}
    _read_kib("/proc/self/status", _STATUS, out)
    return _read_kib("/proc/self/smaps_rollup", _ROLLUP, out)


def _resident() -> int:
    """This process's resident memory now (bytes, anonymous plus file-backed): from
    ``/proc/self/status`` alone, cheap enough to read between two batches (``smaps_rollup``
    walks every page table: milliseconds, on the step's path)."""
    got = _read_kib("/proc/self/status", _STATUS, {"rss_anon": 0, "rss_file": 0})
    return got["rss_anon"] + got["rss_file"]


def rank_worker(data_dir: str, steps: int, batch_size: int, warmup: int, out_json: str) -> None:
    """One rank of a training measurement (run under ``torchrun`` or alone): build the model of
    the prepared data, time ``steps`` steps on its shuffled batches, then ``steps`` steps on
    in-memory generated batches; write this rank's figures to ``out_json.<rank>``."""
    import torch

    from umec_torchrec.data import CTRData, load_data
    from umec_torchrec.distributed import init_distributed
    from umec_torchrec.train.build import build_training, make_model_config
    from umec_torchrec.train.config import TrainConfig
    from umec_torchrec.train.loop import train_steps

    ctx = init_distributed()
    bundle = load_data(f"prepared:{data_dir}")
    mcfg = make_model_config(bundle.train, None)
    tcfg = TrainConfig(batch_size=batch_size, log_every=0)
    dmp, opt = build_training(mcfg, tcfg, ctx)
    local = batch_size // ctx.world_size
    tr = bundle.train
    g = torch.Generator().manual_seed(1234 + ctx.rank)  # the ceiling's batches: generated in memory
    sizes = torch.tensor(tr.table_sizes, dtype=torch.float64)
    mem = CTRData(torch.rand(4 * local, len(tr.dense_names), generator=g),
                  (torch.rand(4 * local, len(sizes), generator=g, dtype=torch.float64) * sizes).long(),
                  torch.randint(0, 2, (4 * local,), generator=g).float(), list(tr.dense_names), list(tr.feature_names),
                  list(tr.table_sizes))
    pool = [mem.make_batch(torch.arange(i * local, (i + 1) * local)) for i in range(4)]
    train_steps(dmp, opt, (pool[i % 4] for i in range(max(warmup, 1))), progress=False, log_every=0)
    ctx.barrier()
    before = _mem()
    resident = [0]  # the most resident memory (anon + file) seen between two batches of the data

    def data_batches():
        epoch = 0
        while True:
            for b in bundle.train.batches(batch_size, shuffle=True, epoch=epoch, rank=ctx.rank,
                                          world_size=ctx.world_size, drop_last=True):
                resident[0] = max(resident[0], _resident())
                yield b
            epoch += 1

    it = data_batches()
    # blocks of data steps and ceiling steps alternate, so drift in the machine's load hits both alike
    blocks = [min(ALTERNATE_STEPS, steps - i) for i in range(0, steps, ALTERNATE_STEPS)]
    got = {"samples": 0, "seconds": 0.0}
    ceil = {"samples": 0, "seconds": 0.0}
    for k in blocks:
        for acc, batches in ((got, (next(it) for _ in range(k))), (ceil, (pool[i % 4] for i in range(k)))):
            r = train_steps(dmp, opt, batches, progress=False, log_every=0)
            acc["samples"] += r["samples"]
            acc["seconds"] += r["seconds"]
            ctx.barrier()
    it.close()
    ctx.barrier()  # every rank has read its rows: the shared pages are mapped by all
    after = _mem()
    ctx.barrier()
    for acc in (got, ceil):
        acc["samples_per_s"] = acc["samples"] / acc["seconds"]  # global samples, as train_steps counts them
    res = {
        "rank": ctx.rank, "world_size": ctx.world_size, "train_rows": len(bundle.train),
        "table_rows": int(sum(bundle.train.table_sizes)),
        "samples_per_s": got["samples_per_s"], "ceiling_samples_per_s": ceil["samples_per_s"],
        "peak_rss": after["hwm"], "data_anon": max(0, after["rss_anon"] - before["rss_anon"]),
        "data_file": max(0, after["rss_file"] - before["rss_file"]),
        "data_pss": max(0, after["pss_anon"] + after["pss_file"] - before["pss_anon"] - before["pss_file"]),
        "data_peak": max(0, resident[0] - before["rss_anon"] - before["rss_file"]),
        "threads": torch.get_num_threads(),
    }
    with open(f"{out_json}.{ctx.rank}", "w") as f:
        json.dump(res, f)


#: training steps per block; blocks of data steps and of ceiling steps alternate
ALTERNATE_STEPS = 5

#: the row counts of the issue's targets
DEFAULT_ROWS = (1_000_000, 4_000_000)


def run_data_bench(rows: Sequence[int] = DEFAULT_ROWS, ranks: Sequence[int] = (1, 2), steps: int = 30,
                   batch_size: int = 2048, warmup: int = 3, workdir: Optional[str] = None, keep: bool = False,
                   chunk_rows: Optional[int] = None, workers: int = 1, say: Any = print,
                   vocab: str = "min_count", hash_size: Optional[int] = None) -> Dict[str, Any]:
    """Run the benchmark (module docstring); returns ``{"rows": [per row count], "ratios": {...}}``.

    Args:
        rows: row counts of the generated files (e.g. 1M and 4M).
        ranks: numbers of ranks to train on.
        steps / batch_size / warmup: timed steps per measurement, global batch, untimed steps.
        workdir: where files go (default: a temporary directory, removed unless ``keep``).
        chunk_rows: ``umec prepare --chunk-rows`` (default: its own).
        workers: ``umec prepare --workers``, and the processes writing the generated files.
        say: where progress lines go.
        vocab / hash_size: ``umec prepare --vocab`` (``"hash"``: tables of ``hash_size`` rows
            whatever the row count, which separates the data's memory from the vocabulary's).
    """
    if vocab == "hash" and not hash_size:
        raise ValueError("vocab='hash' needs a hash_size")
    if not rows or min(rows) < 10 or steps < 1 or any(r < 1 or batch_size % r for r in ranks):
        raise ValueError(f"need row counts >= 10, steps >= 1 and a batch size dividing by every rank count "
                         f"(rows {list(rows)}, steps {steps}, batch {batch_size}, ranks {list(ranks)})")
    root = workdir or tempfile.mkdtemp(prefix="umec-bench-data-")
    os.makedirs(root, exist_ok=True)
    py = sys.executable
    torchrun = os.path.join(os.path.dirname(py), "torchrun")
    env = dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP", PATH=os.path.dirname(py) + os.pathsep + os.environ["PATH"])
    out: List[Dict[str, Any]] = []
    try:
        for n in rows:
            rec: Dict[str, Any] = {"rows": int(n)}
            f = os.path.join(root, f"criteo_{n}.tsv.gz")
            t0 = time.perf_counter()
            write_criteo_tsv_fast(f, int(n), workers=max(1, int(workers)))
            rec["generate_s"] = time.perf_counter() - t0
            rec["file_bytes"] = os.path.getsize(f)
            t0 = time.perf_counter()
            wc = subprocess.run(f"zcat '{f}' | wc -l", shell=True, capture_output=True, text=True, check=True)
            rec["floor_s"] = time.perf_counter() - t0
            if int(wc.stdout.split()[0]) != int(n):
                raise RuntimeError(f"{f}: {wc.stdout.split()[0]} lines, expected {n}")
            d = os.path.join(root, f"prepared_{n}")
            cmd = [py, "-m", "umec_torchrec.cli", "prepare", "--data", f"criteo:{f}", "--out", d, "--force"]
            if chunk_rows:
                cmd += ["--chunk-rows", str(chunk_rows)]
            cmd += ["--workers", str(workers), "--vocab", vocab]
            cmd += ["--hash-size", str(hash_size)] if hash_size else []
            p = _peak_rss_child(cmd, env)
            with open(os.path.join(d, "manifest.json")) as fh:
                rec["table_rows"] = int(sum(json.load(fh)["table_sizes"]))
            rec.update(prepare_s=p["seconds"], prepare_rows_per_s=n / p["seconds"], prepare_peak_rss=p["peak_rss"],
                       floor_rows_per_s=n / rec["floor_s"])
            say(f"{n:,} rows: generated in {rec['generate_s']:.1f}s ({rec['file_bytes'] / 2**20:.1f} MiB gz); "
                f"zcat | wc -l {rec['floor_s']:.2f}s; prepare {p['seconds']:.1f}s "
                f"({rec['prepare_rows_per_s']:,.0f} rows/s), peak RSS {p['peak_rss'] / 2**20:.0f} MiB, "
                f"{rec['table_rows']:,} table rows")
            rec["train"] = {}
            for k in ranks:
                res = os.path.join(root, f"train_{n}_{k}.json")
                worker = ["-c", "import sys; from umec_torchrec.bench.data import rank_worker; "
                                "rank_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), "
                                "sys.argv[5])", d, str(steps), str(batch_size), str(warmup), res]
                if k == 1:
                    cmd = [py, *worker]
                else:
                    cmd = [torchrun, "--nproc_per_node", str(k), "--master_port", "0", "--rdzv_backend", "c10d",
                           "--rdzv_endpoint", "localhost:0", "--no-python", py, *worker]
                _peak_rss_child(cmd, env)
                per = [json.load(open(f"{res}.{r}")) for r in range(k)]
                rec["train"][str(k)] = per
                say(f"  {k} rank(s): " + "; ".join(
                    f"rank {x['rank']}: {x['samples_per_s']:,.0f} samples/s "
                    f"(ceiling {x['ceiling_samples_per_s']:,.0f}), peak RSS {x['peak_rss'] / 2**20:.0f} MiB, "
                    f"data {x['data_anon'] / 2**20:.1f} MiB anon + {x['data_file'] / 2**20:.1f} MiB file, "
                    f"PSS {x['data_pss'] / 2**20:.1f} MiB, data peak {x['data_peak'] / 2**20:.1f} MiB"
                    for x in per))
            out.append(rec)
    finally:
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return {"rows": out, "ratios": ratios(out), "steps": steps, "batch_size": batch_size, "workers": workers,
            "workdir": root, "vocab": vocab, "hash_size": hash_size}


def ratios(recs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The targets' ratios of :func:`run_data_bench`'s per-row-count records."""
    lo, hi = recs[0], recs[-1]
    r: Dict[str, Any] = {"rows": [lo["rows"], hi["rows"]],
                         "prepare_peak_rss_growth": hi["prepare_peak_rss"] / lo["prepare_peak_rss"]}
    if "table_rows" in lo:
        r["table_rows_growth"] = hi["table_rows"] / lo["table_rows"]
    for k in lo["train"]:
        r[f"train_peak_rss_growth_{k}"] = (max(x["peak_rss"] for x in hi["train"][k])
                                           / max(x["peak_rss"] for x in lo["train"][k]))
        lo_d, hi_d = (max(x.get("data_peak", 0) for x in rec["train"][k]) for rec in (lo, hi))
        r[f"train_data_peak_growth_{k}"] = hi_d / lo_d if lo_d else None
        r[f"train_vs_ceiling_{k}"] = min(x["samples_per_s"] / x["ceiling_samples_per_s"] for x in hi["train"][k])
    if "1" in hi["train"] and "2" in hi["train"]:
        one = hi["train"]["1"][0]
        for kind in ("data_anon", "data_file", "data_pss"):
            r[f"{kind}_2_vs_1"] = (max(x[kind] for x in hi["train"]["2"]) / one[kind]) if one[kind] else None
    return r


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec.cli import flags

    p = bsub.add_parser("data", help="the data path at scale: prepare and training memory and speed",
                        description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    d = {k: v.default for k, v in inspect.signature(run_data_bench).parameters.items()}
    p.add_argument("--rows", type=flags.int_list, default=list(d["rows"]),
                   help="row counts of the generated files (default %(default)s)")
    p.add_argument("--ranks", type=flags.int_list, default=list(d["ranks"]),
                   help="numbers of ranks (default %(default)s)")
    p.add_argument("--steps", type=int, default=d["steps"],
                   help="timed training steps per measurement (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="global batch size (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="untimed warm-up steps (default %(default)s)")
    p.add_argument("--dir", default=None, help="keep the files in this directory (default: a temporary one)")
    p.add_argument("--chunk-rows", type=int, default=None, help="umec prepare --chunk-rows")
    p.add_argument("--workers", type=int, default=d["workers"],
                   help="umec prepare --workers, and processes generating the files (default %(default)s)")
    p.add_argument("--vocab", choices=["min_count", "hash"], default=d["vocab"],
                   help="umec prepare --vocab (default %(default)s; hash: fixed tables, flat in rows)")
    p.add_argument("--hash-size", type=int, default=d["hash_size"], help="umec prepare --hash-size (--vocab hash)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=cmd_bench_data)


def cmd_bench_data(args: argparse.Namespace) -> int:
    r = run_data_bench(args.rows, args.ranks, args.steps, args.batch_size, args.warmup, workdir=args.dir,
                       chunk_rows=args.chunk_rows, workers=args.workers, vocab=args.vocab, hash_size=args.hash_size)
    q = r["ratios"]
    print(f"ratios ({q['rows'][0]:,} -> {q['rows'][1]:,} rows):")
    for k, v in q.items():
        if k != "rows":
            print(f"  {k}: {'n/a' if v is None else f'{v:.3f}'}")
    print("targets: peak RSS growth <= 1.2, data memory 2 vs 1 rank <= 0.6, train vs ceiling >= 0.8")
    if args.json:
        print(json.dumps(r))
    return 0
