"""`python -m bench`: run the chosen scenarios against both servers, alternating, and report.

Exit status: 0 when every run delivered every frame in order and every count agreed; 1 when
any run lost, reordered or miscounted anything (targets missed are reported, not fatal);
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import uvloop

from bench.report import Report
from bench.runner import Options, RunResult, run_once
from bench.scenarios import Scenario, build_scenarios
from bench.servers import BENCH_DIR, TOPOLOGIES, free_port
from bench.tokens import new_secret

__all__ = ["main"]

SUMMARY_METRICS = (
    "cpu_us_per_frame",
    "frames_per_s",
    "lat_p99_ms",
    "subscribe_per_s",
    "rss_kib_per_socket",
    "sockets",
    "burst_s",
    "burst_rss_peak_mib",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default="a,b,c,d,e,f,g,h,i", help="comma-separated keys (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small numbers, one run: a smoke test")
    parser.add_argument(
        "--runs", type=int, help="runs per server and scenario (default 3, quick 1)"
    )
    parser.add_argument(
        "--servers", help="only these topologies, e.g. 'reference' while Bifröst is being built"
    )
    parser.add_argument("--generators", type=int, default=4, help="generator processes (default 4)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="handshakes in flight per generator"
    )
    parser.add_argument(
        "--output", type=Path, default=BENCH_DIR / "RESULTS.md", help="where to write the table"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    return parser


def _order(scenario: Scenario, run: int, only: set[str] | None) -> list[str]:
    """Each run starts one server later (of two: subject first on even runs, baseline first on
    odd ones), so drift hits them all alike."""
    servers = list(scenario.servers)
    shift = run % len(servers)
    return [key for key in servers[shift:] + servers[:shift] if only is None or key in only]


def _summary(result: RunResult) -> str:
    m = result.metrics
    parts = [f"{k}={m[k]:.4g}" for k in SUMMARY_METRICS if k in m]
    status = "ok" if not result.errors else f"{len(result.errors)} ERROR(S): {result.errors[0]}"
    return " ".join(parts) + f"  [{status}]"


async def _run_all(
    scenarios: list[Scenario], runs: int, only: set[str] | None, options: Options
) -> tuple[list[RunResult], dict[str, str]]:
    secret = new_secret()
    results: list[RunResult] = []
    labels: dict[str, str] = {}
    for scenario in scenarios:
        print(f"\n== ({scenario.key}) {scenario.title}", flush=True)
        for run in range(runs):
            for key in _order(scenario, run, only):
                spec = TOPOLOGIES[key](free_port, secret)
                labels[key] = spec.label
                print(f"   run {run + 1}/{runs} {spec.label:<10} ", end="", flush=True)
                result = await run_once(
                    scenario, spec, secret, options, tag=f"{scenario.key}-{key}-{run + 1}"
                )
                results.append(result)
                print(_summary(result), flush=True)
                for warning in result.warnings:
                    print(f"      WARNING: {warning}", flush=True)
    return results, labels


WRITTEN_BEGIN = "<!-- Written by hand from here to the end marker; `python -m bench` keeps it. -->"
WRITTEN_END = "<!-- End of the hand-written part. -->"


def _kept_written(output: Path) -> str:
    """The hand-written part of an existing RESULTS.md, markers included, to keep."""
    try:
        existing = output.read_text()
    except OSError:
        return ""
    begin, end = existing.find(WRITTEN_BEGIN), existing.find(WRITTEN_END)
    if begin < 0 or end < begin:
        return ""
    return existing[begin : end + len(WRITTEN_END)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    catalogue = build_scenarios(quick=args.quick, open_file_limit=open_files)
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in catalogue]
    only = set(args.servers.split(",")) if args.servers else None
    if unknown or (only and not only <= TOPOLOGIES.keys()):
        print(
            f"unknown scenario or server: {unknown or sorted(only - TOPOLOGIES.keys())}",
            file=sys.stderr,
        )
        return 2
    scenarios = [catalogue[k] for k in keys]
    runs = args.runs or (1 if args.quick else 3)
    options = Options(
        generators=args.generators,
        concurrency=args.concurrency,
        settle_s=0.5 if args.quick else 1.0,
    )
    results, labels = uvloop.run(_run_all(scenarios, runs, only, options))
    report = Report(scenarios, results, {"bifrost": "Bifröst", "reference": "reference", **labels})
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report.markdown(
        command=command.strip(),
        mode=f"{'quick' if args.quick else 'full'}, {runs} run(s)",
        written="" if args.no_write else _kept_written(args.output),
    )
    print("\n" + text)
    if not args.no_write:
        args.output.write_text(text)
        print(f"written to {args.output}")
    return 1 if any(r.errors for r in results) else 0
