"""Medians over runs, the comparison table, the issue's targets, and bench/RESULTS.md.

Medians, not means: on a noisy two-core machine one run that shared its cores with something
else should not move the figure; the run count is printed beside every table.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.runner import RunResult
from bench.scenarios import Scenario

__all__ = ["Report", "machine_description"]


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    fmt: str
    throughput_only: bool = False


METRICS = (
    Metric("cpu_us_per_frame", "**server CPU per delivered frame, µs** (headline)", "{:.2f}", True),
    Metric("cpu_user_us_per_frame", "… of which user, µs", "{:.2f}", True),
    Metric("cpu_sys_us_per_frame", "… of which kernel, µs", "{:.2f}", True),
    Metric("frames_per_s", "delivered frames/s", "{:,.0f}", True),
    Metric("lat_p50_ms", "latency p50 flat out, ms (POST to receipt)", "{:.2f}", True),
    Metric("lat_p99_ms", "latency p99 flat out, ms", "{:.2f}", True),
    Metric("lat_max_ms", "latency max flat out, ms", "{:.2f}", True),
    Metric("paced_lat_p50_ms", "latency p50 paced, ms", "{:.2f}", True),
    Metric("paced_lat_p99_ms", "latency p99 paced, ms", "{:.2f}", True),
    Metric("paced_lat_max_ms", "latency max paced, ms", "{:.2f}", True),
    Metric("paced_cpu_us_per_frame", "server CPU per frame paced, µs", "{:.2f}", True),
    Metric("subscribe_per_s", "connect+subscribe rate, sockets/s", "{:,.0f}"),
    Metric("connect_cpu_us_per_socket", "server CPU per connect+subscribe, µs", "{:,.0f}"),
    Metric("rss_kib_per_socket", "server RSS per idle authenticated socket, KiB", "{:.1f}"),
    Metric("rss_mib", "server RSS with all sockets, MiB", "{:.1f}"),
    Metric("sockets", "sockets held", "{:,.0f}"),
    Metric("gen_cpu_share", "generator CPU, busiest process, cores", "{:.2f}"),
    Metric("broadcaster_cpu_share", "broadcaster CPU, cores", "{:.2f}", True),
    Metric("burst_s", "**burst: first POST to last frame received, s**", "{:.2f}", True),
    Metric("burst_cpu_s", "server CPU over the burst, s", "{:.2f}", True),
    Metric("burst_rss_before_mib", "server RSS before the burst, MiB", "{:.1f}", True),
    Metric("burst_rss_peak_mib", "server peak RSS during the burst (VmHWM), MiB", "{:.1f}", True),
    Metric("slowest_post_s", "slowest POST /broadcast answer, s", "{:.2f}", True),
)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(fmt: str, value: float | None) -> str:
    return "n/a" if value is None else fmt.format(value)


def _ratio(subject: float | None, baseline: float | None) -> str:
    if subject is None or baseline is None or baseline == 0:
        return "n/a"
    return f"{subject / baseline:.2f}"


def machine_description() -> str:
    """nproc, CPU model, kernel, Python and Node versions: enough to compare two RESULTS.md."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = "absent"
    if shutil.which("node"):
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs (nproc), {model}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; Node {node}"
    )


@dataclass(frozen=True, slots=True)
class TargetOutcome:
    text: str
    verdict: str
    detail: str


class Report:
    """All runs of one invocation, grouped by scenario and server."""

    def __init__(
        self, scenarios: Sequence[Scenario], runs: Sequence[RunResult], labels: dict[str, str]
    ) -> None:
        self.scenarios = list(scenarios)
        self.runs = list(runs)
        self.labels = labels

    def _runs(self, scenario: str, server: str) -> list[RunResult]:
        return [r for r in self.runs if r.scenario == scenario and r.server == server]

    def median(self, scenario: str, server: str, metric: str) -> float | None:
        return _median(
            [r.metrics[metric] for r in self._runs(scenario, server) if metric in r.metrics]
        )

    def _scenario(self, key: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.key == key), None)

    def scenario_table(self, scenario: Scenario) -> list[str]:
        """One column per server and a ratio column per pair of them, earlier over later."""
        servers = scenario.servers
        counts = [len(self._runs(scenario.key, server)) for server in servers]
        count = min(counts) or max(counts)
        labels = [self.labels.get(server, server) for server in servers]
        pairs = list(itertools.combinations(range(len(servers)), 2))
        ratios = [f"ratio {labels[i]}/{labels[j]}" for i, j in pairs]
        lines = [
            f"### ({scenario.key}) {scenario.title}",
            "",
            f"Medians of {count} run(s) per server.",
            "",
            "| " + " | ".join(["metric", *labels, *ratios]) + " |",
            "|---|" + "---:|" * (len(servers) + len(pairs)),
        ]
        for metric in METRICS:
            if metric.throughput_only and not scenario.throughput:
                continue
            medians = [self.median(scenario.key, server, metric.key) for server in servers]
            if all(m is None for m in medians):
                continue
            cells = [
                metric.label,
                *(_fmt(metric.fmt, m) for m in medians),
                *(_ratio(medians[i], medians[j]) for i, j in pairs),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if scenario.capacity:
            lines += ["", *self.capacity_table(scenario)]
        return lines

    def capacity_table(self, scenario: Scenario) -> list[str]:
        a, b = scenario.subject, scenario.baseline
        la, lb = self.labels.get(a, a), self.labels.get(b, b)
        lines = [
            f"| sockets | {la} RSS MiB | {la} KiB/socket | {la} subscribe/s | "
            f"{lb} RSS MiB | {lb} KiB/socket | {lb} subscribe/s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for index, target in enumerate(scenario.steps):
            cells = [f"{target:,}"]
            for server in (a, b):
                steps = [
                    r.steps[index] for r in self._runs(scenario.key, server) if len(r.steps) > index
                ]
                cells += [
                    _fmt("{:.1f}", _median([s.rss_mib for s in steps])),
                    _fmt("{:.1f}", _median([s.rss_kib_per_socket for s in steps])),
                    _fmt("{:,.0f}", _median([s.subscribe_per_s for s in steps])),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def _compare(
        self, key: str, metric: str, text: str, holds: Callable[[float, float], bool]
    ) -> TargetOutcome:
        scenario = self._scenario(key)
        if scenario is None:
            return TargetOutcome(text, "not run", "")
        ma = self.median(key, scenario.subject, metric)
        mb = self.median(key, scenario.baseline, metric)
        if ma is None or mb is None:
            return TargetOutcome(text, "not run", "a server has no figure")
        verdict = "PASS" if holds(ma, mb) else "FAIL"
        return TargetOutcome(text, verdict, f"{ma:.4g} vs {mb:.4g} (ratio {_ratio(ma, mb)})")

    def targets(self) -> list[TargetOutcome]:
        """The issue's targets, each judged on medians of the scenario that measures it."""
        cpu = "server CPU per delivered frame <= 0.7x reference"
        outcomes = [
            self._compare("a", "cpu_us_per_frame", f"(a) {cpu}", lambda s, r: s <= 0.7 * r),
            self._compare(
                "a",
                "cpu_us_per_frame",
                "(a) server CPU per delivered frame <= 0.75x reference "
                "(one broadcast at a time: coalesced writes do not make it worse)",
                lambda s, r: s <= 0.75 * r,
            ),
            self._compare("b", "cpu_us_per_frame", f"(b) {cpu}", lambda s, r: s <= 0.7 * r),
            self._compare(
                "a",
                "frames_per_s",
                "(a) delivered frames/s >= 1.2x reference",
                lambda s, r: s >= 1.2 * r,
            ),
            self._compare(
                "a", "lat_p99_ms", "(a) p99 latency flat out <= reference", lambda s, r: s <= r
            ),
            self._compare(
                "a",
                "paced_lat_p99_ms",
                "(a) p99 latency paced <= reference",
                lambda s, r: s <= r,
            ),
            self._compare(
                "c",
                "subscribe_per_s",
                "(c) connect+subscribe rate >= reference",
                lambda s, r: s >= r,
            ),
        ]
        history = "server CPU per delivered frame, history on <= 1.15x history off"
        outcomes += [
            self._compare(key, "cpu_us_per_frame", f"({key}) {history}", lambda s, b: s <= 1.15 * b)
            for key in ("f", "g")
        ]
        outcomes += [
            self._compare(
                "h",
                "cpu_us_per_frame",
                "(h) server CPU per delivered frame <= 0.5x reference",
                lambda s, r: s <= 0.5 * r,
            ),
            self._compare(
                "h", "lat_p99_ms", "(h) p99 latency flat out <= reference", lambda s, r: s <= r
            ),
        ]
        text = "(c) RSS per idle authenticated socket <= 16 KiB"
        scenario = self._scenario("c")
        value = self.median("c", scenario.subject, "rss_kib_per_socket") if scenario else None
        outcomes.append(
            TargetOutcome(text, "not run", "")
            if value is None
            else TargetOutcome(text, "PASS" if value <= 16 else "FAIL", f"{value:.1f} KiB")
        )
        text = "(d) capacity run holds every socket with no errors"
        scenario = self._scenario("d")
        runs = self._runs("d", scenario.subject) if scenario else []
        if not runs or scenario is None:
            outcomes.append(TargetOutcome(text, "not run", ""))
        else:
            held = [r for r in runs if r.metrics.get("held_all") == 1.0 and not r.errors]
            verdict = "PASS" if len(held) == len(runs) else "FAIL"
            outcomes.append(
                TargetOutcome(
                    text, verdict, f"{len(held)}/{len(runs)} runs held {scenario.sockets:,}"
                )
            )
        scenario = self._scenario("i")
        text = "(i) a burst to every socket completes, nothing lost or reordered"
        runs = self._runs("i", scenario.subject) if scenario else []
        if not runs or scenario is None:
            outcomes.append(TargetOutcome(text, "not run", ""))
        else:
            clean = [r for r in runs if not r.errors]
            frames = scenario.sockets * scenario.broadcasts
            outcomes.append(
                TargetOutcome(
                    text,
                    "PASS" if len(clean) == len(runs) else "FAIL",
                    f"{len(clean)}/{len(runs)} runs delivered {frames:,} frames to "
                    f"{scenario.sockets:,} sockets",
                )
            )
        return outcomes

    def markdown(self, *, command: str, mode: str, written: str = "") -> str:
        """The whole RESULTS.md; `written` (a hand-written summary) goes before the tables."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            "# Bifröst benchmark results",
            "",
            f"- date: {now}",
            f"- machine: {machine_description()}",
            f"- command: `{command}` ({mode})",
            "- servers: Bifröst (one Sanic process, `--single-process`) and the Node.js reference "
            "(`bench/reference/server.js`, ws + jsonwebtoken); in (e), two Bifröst processes "
            "sharing a `redis-server` of their own; in (f) and (g), also one Bifröst process with "
            "`BIFROST_HISTORY_SIZE=100` and positioned subscribers; same JWT_SECRET, loopback only",
            "",
            "CPU is utime+stime of the server's process tree from /proc during the broadcast "
            "phase; RSS per socket is (RSS with all sockets - RSS before) / sockets. Generators "
            "and server share the machine's cores, so figures are relative: read the ratio column.",
            "",
        ]
        if written:
            lines += [written, ""]
        lines += ["## Tables", ""]
        for scenario in self.scenarios:
            lines += [*self.scenario_table(scenario), ""]
        lines += [
            "## Targets (computed from the tables)",
            "",
            "| target | verdict | medians (the scenario's first vs second server) |",
            "|---|---|---|",
        ]
        lines += [f"| {t.text} | {t.verdict} | {t.detail} |" for t in self.targets()]
        warnings = [
            f"({r.scenario}, {self.labels.get(r.server, r.server)}) {w}"
            for r in self.runs
            for w in r.warnings
        ]
        errors = [
            f"({r.scenario}, {self.labels.get(r.server, r.server)}) {e}"
            for r in self.runs
            for e in r.errors
        ]
        if warnings:
            lines += ["", "## Warnings", "", *(f"- {w}" for w in dict.fromkeys(warnings))]
        if errors:
            lines += ["", "## Errors", "", *(f"- {e}" for e in dict.fromkeys(errors))]
        return "\n".join(lines) + "\n"
