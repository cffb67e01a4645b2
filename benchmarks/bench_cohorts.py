"""Cohorts against the lockstep loop and its_hub, with the CPU time of every process.

The peer benchmark (bench_peer.py) counts requests through a proxy; this one
sends them straight to the testbed servers and reads, for each run, the CPU
seconds that the target server, the PRM server and the client process (the
search loop, its HTTP threads, its tokenizers) spent, from /proc (each
server's process tree, every thread). That says what bounds throughput on a
machine where all of them share the cores: a server whose CPU time per
problem times the problems per second is near its thread count is saturated,
and no schedule of the client's calls can make it go faster.

Same searches as bench_peer.py (`specs_config`, `its_hub_algorithm`: n = 4,
the testbed target proposing, the testbed PRM scoring), ``--in-flight``
problems at a time, the variants in alternating order for ``--repeats``
rounds, after a warm-up of every variant.

    pip install -e ".[peer]"
    python benchmarks/bench_cohorts.py [--methods beam smc] [--problems 64] [--repeats 2] [--port 8511]
                                       [--out benchmarks/results/cohorts.json] [--write] [--from-json F]

It starts the three testbed servers (`specs testbed serve`) and stops them
at the end. ``--write`` replaces this benchmark's section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HEADING = "## Cohorts: where the time goes on shared cores"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (and, with ``tree``, every descendant), all threads."""
    total = 0.0
    for p in [pid] + (_descendants(pid) if tree else []):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:  # a thread or process that ended meanwhile
            pass
    return total


def _descendants(pid: int) -> list[int]:
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["beam", "smc"], choices=["beam", "smc"])
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--cohorts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--port", type=int, default=8511)
    ap.add_argument("--logs", default="out/cohort-servers")
    ap.add_argument("--out", default="benchmarks/results/cohorts.json")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--from-json", help="only render the section from a JSON written by an earlier run")
    args = ap.parse_args(argv)

    from machine import describe, write_section

    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        return _finish(doc, args.write, write_section)

    import bench_peer as peer

    peer.require_its_hub()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from specs_llm.backends import load_model
    from specs_llm.data import load_problems
    from specs_llm.search import Models
    from specs_llm.testbed import model_path
    from specs_llm.testbed.serve import serve, stop

    procs = serve(args.port, args.logs, block=False)
    rows = []
    try:
        servers = {"target": procs[1].pid, "prm": procs[2].pid, "client": os.getpid()}
        url = {r: f"http://127.0.0.1:{args.port + i}" for i, r in ((1, "target"), (2, "prm"))}
        opts = dict(timeout=120.0, max_retries=2, step_delimiter=peer.DELIMITER)

        def prm():
            return load_model("openai_server", "prm", url["prm"], model="testbed-prm",
                              tokenizer_path=model_path("prm"), convention="value_head", **opts)

        target = load_model("openai_server", "target", url["target"], model="testbed-target",
                            tokenizer_path=model_path("target"), **opts)
        models = Models(None, target, prm())
        hub_prm, hub_orm, _ = peer.make_adapters(prm())
        lm = peer.its_hub_lm(url["target"], "testbed-target", peer.STEP_TOKENS)
        everything = load_problems("testbed")
        questions = [p.problem for p in everything[: args.problems]]
        warm = [p.problem for p in everything[-16:]]
        k = args.in_flight
        for method in args.methods:
            alg = peer.its_hub_algorithm(method, hub_prm, hub_orm)
            config = peer.specs_config(method, 12.3)  # smc: bench_peer's fitted weight (it varies little)
            runs = {"its_hub": lambda qs: peer.run_its_hub(alg, lm, qs, k)}
            for c in args.cohorts:
                runs[f"specs, {c} cohort{'s' * (c > 1)}"] = lambda qs, c=c: peer.run_specs(models, config, qs, k, c)
            for run in runs.values():  # warm-up: connections, compilation, server caches
                run(warm)
            found = {name: [] for name in runs}
            for rep in range(args.repeats):
                for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
                    # the client is this process alone (the servers are its children)
                    before = {r: cpu_seconds(pid, tree=r != "client") for r, pid in servers.items()}
                    _, wall = runs[name](questions)
                    used = {r: cpu_seconds(pid, tree=r != "client") - before[r] for r, pid in servers.items()}
                    found[name].append({"pps": len(questions) / wall, "wall": wall,
                                        "cpu_ms": {r: 1e3 * v / len(questions) for r, v in used.items()},
                                        "load": os.getloadavg()[0]})
                    print(f"{method} {name:18s} {found[name][-1]['pps']:6.2f} problems/s  CPU ms/problem "
                          + " ".join(f"{r} {v:.1f}" for r, v in found[name][-1]["cpu_ms"].items()), flush=True)
            for name, rounds in found.items():
                best = max(rounds, key=lambda r: r["pps"])
                rows.append([method, name, best, statistics.median(r["pps"] for r in rounds), len(rounds)])
    finally:
        stop(procs)

    doc = {"date": dt.date.today().isoformat(), "machine": describe(),
           "command": "python benchmarks/bench_cohorts.py " + " ".join(sys.argv[1:]),
           "problems": args.problems, "in_flight": args.in_flight, "repeats": args.repeats, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return _finish(doc, args.write, write_section)


def _finish(doc, write: bool, write_section) -> int:
    text = render(doc)
    print(text)
    if write:
        write_section(HEADING, text)
    return 0


def render(doc: dict) -> str:
    rows = doc["rows"]
    lines = [HEADING, "",
             f"{doc['date']}; {doc['machine']}. `{doc['command']}`. The testbed servers (one CPU thread each) "
             f"reached directly, no proxy; {doc['problems']} held-out problems, {doc['in_flight']} in flight, "
             f"{doc['repeats']} alternating rounds "
             "after a warm-up of each variant; the fastest round's numbers (and the median problems/s). CPU "
             "ms/problem: CPU time of the process (its tree, all threads) over the problems; x problems/s = the "
             "cores it kept busy.", "",
             "| method | run | problems/s (median) | target CPU ms/problem | PRM | client | target cores busy | "
             "all processes' cores busy |", "|---|---|---|---|---|---|---|---|"]
    for method, name, best, median, _ in rows:
        cpu = best["cpu_ms"]
        lines.append(f"| {method} | {name} | {best['pps']:.2f} ({median:.2f}) | {cpu['target']:.1f} | "
                     f"{cpu['prm']:.1f} | {cpu['client']:.1f} | {cpu['target'] * best['pps'] / 1e3:.2f} | "
                     f"{sum(cpu.values()) * best['pps'] / 1e3:.2f} |")
    lines += ["", "Reading: \"target cores busy\" is the target server's CPU time over the wall time, its engine "
              "thread and its API server together. Where it is near 1 for every run, the target's one engine thread "
              "is the bottleneck, and the throughput ratio is bounded by the CPU each library makes the target spend "
              "per problem: a schedule cannot make the engine work faster, only keep it from idling."]
    for method in dict.fromkeys(m for m, *_ in rows):
        got = {name: best for m, name, best, _, _ in rows if m == method}
        hub, lock = got.get("its_hub"), got.get("specs, 1 cohort")
        if not (hub and lock):
            continue
        best_name = max((n for n in got if n != "its_hub"), key=lambda n: got[n]["pps"])
        bound = hub["cpu_ms"]["target"] / lock["cpu_ms"]["target"]
        lines.append(
            f"- {method}: the target spends {lock['cpu_ms']['target']:.0f} ms of CPU per problem for specs' lockstep "
            f"loop, {hub['cpu_ms']['target']:.0f} ms for its_hub ({bound:.2f}x); at the same target cores busy specs could reach {bound:.2f}x its_hub's throughput. "
            f"Measured: {got[best_name]['pps'] / hub['pps']:.2f}x ({best_name}), lockstep "
            f"{lock['pps'] / hub['pps']:.2f}x. More cohorts make each call a smaller batch: the target's CPU per "
            "problem " + " -> ".join(f"{got[n]['cpu_ms']['target']:.0f}" for n in got if n != "its_hub")
            + f" ms for {', '.join(n.split(', ')[1] for n in got if n != 'its_hub')}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
