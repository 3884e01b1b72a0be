"""How fast a second operator replica takes over when the leader goes, against the emulated API server.

Two real operator processes with leader election (client-go's timings by default: Lease 15 s,
renew deadline 10 s, retry 2 s) over a cluster already holding `--jobs` TrainingJobs (pods
Running) and `--services` ModelServices (Ready). Each round stops the leader — SIGTERM (it
releases the Lease) or SIGKILL (the Lease has to expire) — creates a TrainingJob at that moment,
and measures from the signal:

- Lease taken: the follower's write that takes the Lease arrives;
- first write: the new leader's first write for the new TrainingJob arrives (its status);
- LIST requests the new leader made from the signal to that write (a warm follower: none).

The stopped replica is started again as a follower before the next round. The peer, measured in
the same run: one replica without leader election, killed and started again at once — the best
a single replica can do (no kubelet restart back-off, no image pull, no scheduling), which lists
everything again before its first write.

    python benchmarks/operator_failover.py [--rounds 3] [--jobs 60] [--services 20]
        [--lease-duration 15 --renew-deadline 10 --retry-period 2]

Prints a table and writes benchmarks/results/operator_failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import kmock

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "workloads")]

from tests.operator.apiserver import ApiServer  # noqa: E402
from tests.operator.emulator import (  # noqa: E402
    Cluster,
    OperatorProcess,
    declare_resources,
    pod_status,
    write_kubeconfig,
)

RESULTS = REPO / "benchmarks" / "results" / "operator_failover.json"
LEASE_NAMESPACE, LEASE = "maas-system", "maas-operator"
REPLICAS = ("replica-a", "replica-b")


@dataclass(frozen=True)
class Arrival:
    at: float
    method: str
    path: str
    sender: str
    body: Any
    listing: bool


class TimedEmulator(ApiServer):
    """The test emulator, noting when each request arrived and who sent it (its bearer token)."""

    arrivals: list[Arrival]

    async def _handle(self, request: Any) -> Any:
        sender = str(request.headers.get("Authorization", "")).removeprefix("Bearer ")
        method = str(request.method).upper().rsplit(".", 1)[-1]
        listing = request.action == kmock.action.LIST
        self.arrivals.append(Arrival(time.monotonic(), method, request.url.path, sender, request.data, listing))
        del self._requests[:-1]  # kmock's own log is matched on every request: keep it short
        return await super()._handle(request)


def trainingjob(name: str) -> dict[str, Any]:
    spec = {
        "trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}},
        "workers": {"replicas": 2},
        "output": {"uri": f"s3://models/{name}"},
        "runPolicy": {"cleanPodPolicy": "None"},
    }
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def modelservice(name: str, index: int) -> dict[str, Any]:
    spec = {"model": {"uri": f"s3://models/{name}", "sha256": f"{index:064x}"}, "replicas": 2}
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name}, "spec": spec}


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


class Bench:
    def __init__(self, emulator: TimedEmulator, cluster: Cluster, scratch: pathlib.Path, args: argparse.Namespace):
        self.emulator = emulator
        self.cluster = cluster
        self.scratch = scratch
        self.args = args
        self.replicas: dict[str, OperatorProcess] = {}

    def replica(self, name: str, election: bool = True) -> OperatorProcess:
        env = {
            "MAAS_OPERATOR_RESYNC_SECONDS": "10",
            "MAAS_OPERATOR_LEADER_ELECTION": str(election).lower(),
            # No training heads here: progress polls are refused at once (a cluster's heads answer),
            # rather than each waiting for the 3 s timeout on an unresolvable name.
            "MAAS_OPERATOR_PROGRESS_URL_TEMPLATE": "http://127.0.0.1:9/{namespace}/{service}",
        }
        if election:
            env |= {
                "MAAS_OPERATOR_LEADER_ELECTION_NAMESPACE": LEASE_NAMESPACE,
                "MAAS_OPERATOR_LEADER_ELECTION_IDENTITY": name,
                "MAAS_OPERATOR_LEADER_ELECTION_LEASE_DURATION_SECONDS": str(self.args.lease_duration),
                "MAAS_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": str(self.args.renew_deadline),
                "MAAS_OPERATOR_LEADER_ELECTION_RETRY_PERIOD_SECONDS": str(self.args.retry_period),
            }
        kubeconfig = write_kubeconfig(self.cluster.url, self.scratch, token=name)
        process = OperatorProcess(kubeconfig, self.scratch / f"{name}.log", env)
        self.replicas[name] = process
        return process

    async def holder(self) -> str:
        lease = await self.cluster.get("Lease", LEASE, LEASE_NAMESPACE)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    async def warm(self, name: str, since: float) -> None:
        """Wait until `name`, started at `since`, has listed every resource it watches (no new
        LIST for a second)."""
        counts: list[int] = []

        async def listed() -> bool:
            counts.append(sum(a.sender == name and a.listing and a.at >= since for a in self.emulator.arrivals))
            return len(counts) > 20 and counts[-1] > 0 and counts[-1] == counts[-21]

        await wait_until(listed, 60, f"{name} listing")

    async def populate(self) -> None:
        jobs = [f"job-{i:03d}" for i in range(self.args.jobs)]
        services = [f"svc-{i:03d}" for i in range(self.args.services)]
        for name in jobs:
            await self.cluster.create(trainingjob(name))
        for index, name in enumerate(services):
            await self.cluster.create(modelservice(name, index))

        async def children() -> bool:
            pods = {p["metadata"]["name"] for p in await self.cluster.list("Pod")}
            deployments = {d["metadata"]["name"] for d in await self.cluster.list("Deployment")}
            return all(f"{job}-worker-1" in pods for job in jobs) and set(services) <= deployments

        await wait_until(children, 600, "every child", interval=0.5)
        for pod in await self.cluster.list("Pod"):
            await self.cluster.patch("Pod", pod["metadata"]["name"], {"status": pod_status("Running")}, "status")
        for deployment in await self.cluster.list("Deployment"):
            replicas = deployment["spec"].get("replicas", 1)
            counts = dict.fromkeys(("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"), replicas)
            status = {"observedGeneration": 1, **counts}
            await self.cluster.patch("Deployment", deployment["metadata"]["name"], {"status": status}, "status")

        async def settled() -> bool:
            phases = [(o.get("status") or {}).get("phase") for o in await self.cluster.list("TrainingJob")]
            phases += [(o.get("status") or {}).get("phase") for o in await self.cluster.list("ModelService")]
            return all(phase in ("Running", "Ready") for phase in phases)

        await wait_until(settled, 600, "every object Running or Ready", interval=0.5)

    async def stop(self, name: str, kill: bool) -> float:
        """Signal `name`; returns when the signal was sent. Waits for the exit off the event loop."""
        process = self.replicas[name].process
        assert process is not None
        signalled = time.monotonic()
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        await asyncio.to_thread(process.wait)
        self.replicas[name].process = None
        return signalled

    def first(self, after: float, sender: str, match: Any) -> float | None:
        found = [a.at for a in self.emulator.arrivals if a.at >= after and a.sender == sender and match(a)]
        return min(found) - after if found else None

    async def measure(self, leader: str, successor: str, probe: str, kill: bool, restart: bool) -> dict[str, Any]:
        """Stop `leader`, create `probe`; `successor` (a follower, or `leader` again when `restart`) takes over."""
        signalled = await self.stop(leader, kill)
        await self.cluster.create(trainingjob(probe))
        if restart:
            self.replicas[leader].start()

        def probe_write(a: Arrival) -> bool:
            return a.method != "GET" and f"/trainingjobs/{probe}" in a.path

        await wait_until(lambda: _true(self.first(signalled, successor, probe_write)), 120, f"{probe} reconciled")
        first_write = self.first(signalled, successor, probe_write)
        assert first_write is not None

        def takes_lease(a: Arrival) -> bool:
            body = a.body if isinstance(a.body, dict) else {}
            return "/leases" in a.path and a.method in ("PUT", "POST") and body.get("spec", {}).get("holderIdentity")

        lease_taken = self.first(signalled, successor, takes_lease)
        lists = sum(
            a.sender == successor and a.listing and signalled <= a.at <= signalled + first_write
            for a in self.emulator.arrivals
        )
        return {"leaseTakenSeconds": lease_taken, "firstWriteSeconds": first_write, "listRequests": lists}


async def _true(value: Any) -> bool:
    return value is not None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    emulator = TimedEmulator()
    emulator.arrivals = []
    results: dict[str, list[dict[str, Any]]] = {"graceful": [], "killed": [], "single replica, restarted": []}
    async with emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as session:
        declare_resources(emulator)
        cluster = Cluster(emulator, str(server.url), session)
        with tempfile.TemporaryDirectory() as scratch:
            bench = Bench(emulator, cluster, pathlib.Path(scratch), args)
            try:
                # The peer first: one replica without leader election.
                single = bench.replica("single", election=False)
                single.start()
                await bench.warm("single", 0.0)
                await bench.populate()
                for n in range(args.rounds):
                    round_ = await bench.measure("single", "single", f"probe-single-{n}", kill=True, restart=True)
                    results["single replica, restarted"].append(round_)
                    await bench.warm("single", time.monotonic() - round_["firstWriteSeconds"])
                await bench.stop("single", kill=False)

                for name in REPLICAS:
                    bench.replica(name).start()
                started = time.monotonic()
                await wait_until(lambda: bench_holder(bench), 60, "a leader")
                for name in REPLICAS:
                    await bench.warm(name, started)
                for mode in ("graceful", "killed"):
                    for n in range(args.rounds):
                        leader = await bench.holder()
                        (follower,) = (name for name in REPLICAS if name != leader)
                        round_ = await bench.measure(leader, follower, f"probe-{mode}-{n}", mode == "killed", False)
                        results[mode].append(round_)
                        restarted = time.monotonic()
                        bench.replicas[leader].start()
                        await bench.warm(leader, restarted)
            finally:
                for process in bench.replicas.values():
                    await asyncio.to_thread(process.stop)
    return {
        "trainingJobs": args.jobs,
        "modelServices": args.services,
        "leaseDurationSeconds": args.lease_duration,
        "renewDeadlineSeconds": args.renew_deadline,
        "retryPeriodSeconds": args.retry_period,
        "rounds": results,
    }


async def bench_holder(bench: Bench) -> bool:
    return await bench.holder() in REPLICAS


def summary(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    table: dict[str, dict[str, float | None]] = {}
    for mode, rounds in result["rounds"].items():
        leases = [r["leaseTakenSeconds"] for r in rounds if r["leaseTakenSeconds"] is not None]
        writes = [r["firstWriteSeconds"] for r in rounds]
        table[mode] = {
            "leaseTakenMedian": statistics.median(leases) if leases else None,
            "firstWriteMedian": statistics.median(writes),
            "firstWriteMax": max(writes),
            "listRequestsMedian": statistics.median(r["listRequests"] for r in rounds),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--lease-duration", type=int, default=15)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    table = summary(result)
    result["summary"] = table
    peer = table["single replica, restarted"]["firstWriteMedian"]
    print(f"{'':28} {'Lease taken':>12} {'first write (median / max)':>28} {'LIST requests':>14} {'vs restart':>11}")
    for mode, row in table.items():
        lease = f"{row['leaseTakenMedian']:.2f} s" if row["leaseTakenMedian"] is not None else "-"
        writes = f"{row['firstWriteMedian']:.2f} s / {row['firstWriteMax']:.2f} s"
        ratio = f"{row['firstWriteMedian'] / peer:.2f}x" if peer else "-"
        print(f"{mode:28} {lease:>12} {writes:>28} {row['listRequestsMedian']:>14.0f} {ratio:>11}")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
