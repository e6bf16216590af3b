"""Room benchmark: how many students' notebooks one model server holds at once.

    nice -n 10 python benchmarks/bench_room.py --save          # the embedded model, rooms of 1, 2, 4 (~6-10 min)
    python benchmarks/bench_room.py --url http://HOST:8000/v1 --model qwen2.5-coder --students 1 4 8 16 32

A workshop's teacher serves one model and every student's notebook points at it. By default this serves the
embedded model (the registered GGUF of `--backend local`) the way a room needs it: llama-cpp-python's server, as
p2c starts it (`LlamaServer`), with `--interrupt_requests False` (its default ends the reply being streamed as soon
as another request arrives). That engine answers ONE request at a time: it has one slot, and the others wait at the
server. `--url URL --model M` measures any other OpenAI-compatible server instead (llama.cpp's own `llama-server
-np K`, vLLM, Ollama, the scripted server); its slots are read from llama.cpp's `/props`, else taken from `--slots`.

Each student is a process of its own (a notebook is a kernel of its own: nothing learned about the server is
shared) that sends a call a live workshop notebook sends again and again: the plan regenerated with the student's
feedback (a file's regeneration is the same call with a longer prompt: the plan and designs too), built by the
project's prompt builder from examples/mixup/paper.pdf, with the plan the embedded model recorded in
examples/mixup/local.cassette.jsonl as the previous answer, each student with feedback of its own (they share the
paper and the plan as a prefix, as a room does). It goes through `OpenAIBackend` with a notebook's settings, the
reply capped at `--max-tokens` (not continued) so that a measurement takes minutes. All M students start together
(a barrier); one call first, not counted, warms the server as a teacher's first call would (the paper read once).

Per student: time to first token, tokens/s while streaming (tokens after the first / their time), total time, and
whether it waited for a slot (its first token came after another student's reply had ended). Per room: median /
p95 TTFT, median and slowest per-student tokens/s, aggregate tokens/s, failures. A room HOLDS when every student
got a first token within `--max-ttft` (30 s) and streamed at `--min-rate` (2 tokens/s, about reading speed) or
faster. Replies in class are longer than the cap: a projection re-times each room with whole replies (the recorded
mean size of this call), at the measured rates, with the students who waited waiting that much longer.

These are real measurements of this machine, at its load when run: the JSON records the cores, CPU, load average,
model, slots and context size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from p2c_notebook.backends.base import ChatRequest, Messages
from p2c_notebook.backends.local.server import LlamaServer
from p2c_notebook.backends.openai import OpenAIBackend
from p2c_notebook.backends.retry import RetryNotice
from p2c_notebook.errors import P2CError
from p2c_notebook.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAPER = ROOT / "examples" / "mixup" / "paper.pdf"
CASSETTE = ROOT / "examples" / "mixup" / "local.cassette.jsonl"
STAGE = "plan"
WARMUP_TIMEOUT_S = 3600.0
START_LIMIT_S = 180.0  # for the students' processes to start (importing the client) before the barrier
# What students type into the plan's feedback box: each student gets one, in turn (a room writes different things,
# after the same paper and plan).
FEEDBACK = (
    "The plan must train with mixup exactly as Section 3.2 says: lambda ~ Beta(alpha, alpha) per mini-batch, a "
    "random permutation of the batch, mixed inputs and mixed one-hot labels. Say so in the methodology.",
    "Add the expected calibration error with 15 equal-width bins to the evaluation, next to test accuracy, and "
    "say which table of the paper each metric reproduces.",
    "List all three datasets (two moons, two spirals, four Gaussian blobs) with their sizes and noise levels as "
    "the paper gives them, and the five seeds each experiment is repeated over.",
    "The network is one hidden layer of 64 units trained with plain SGD: give the learning rate, batch size and "
    "number of epochs from the paper, and mark any value the paper does not state as an assumption.",
)


# --- the request --------------------------------------------------------------------------------------------
def recorded_plan(cassette: Path = CASSETTE) -> str:
    """The plan the embedded model wrote for the example paper (the cassette's first plan reply): what a student's
    notebook shows before the student regenerates it."""
    with cassette.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("request", {}).get("stage") == STAGE and isinstance(record.get("reply"), str):
                return str(record["reply"])
    raise ValueError(f"{cassette} records no {STAGE} reply")


def room_requests(paper: Path = PAPER, cassette: Path = CASSETTE) -> list[Messages]:
    """One request per feedback text: the planning call with the paper, the recorded plan, the student's feedback."""
    # Imported here: the students' processes import this module and need only the client.
    from p2c_notebook.paper import read_paper
    from p2c_notebook.prompts.builder import PromptBuilder

    builder = PromptBuilder(read_paper(paper).to_text())
    planning = builder.planning(STAGE, {})
    previous = recorded_plan(cassette)
    return [PromptBuilder.with_feedback(planning, previous, text) for text in FEEDBACK]


# --- one student --------------------------------------------------------------------------------------------
def student_settings(base_url: str, model: str, max_tokens: int) -> Settings:
    """What a student's notebook runs with when its SETTINGS point at the room's server; a reply stops at the cap."""
    return Settings(backend="openai", model=model, base_url=base_url, max_tokens=max_tokens, max_continuations=0)


def ask(index: int, settings: Settings, messages: Messages) -> dict[str, Any]:
    """One call through the real client, timed: wall-clock stamps (comparable across processes)."""
    record: dict[str, Any] = {"student": index, "ok": False, "error": None, "retries": 0, "chunks": 0}
    first: list[float] = []
    backend = OpenAIBackend(settings)

    def on_delta(text: str) -> None:
        if text and not first:
            first.append(time.time())
        record["chunks"] += 1

    def on_retry(notice: RetryNotice) -> None:
        record["retries"] += 1
        if notice.restart:  # the text streamed so far is void: so is its first token
            first.clear()
            record["chunks"] = 0

    record["start"] = time.time()
    try:
        completion = backend.complete(ChatRequest(messages, STAGE), on_delta, on_retry)
    except P2CError as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a student's failure is a measurement, not the benchmark's end
        record["error"] = f"{type(exc).__name__}: {exc}"
    else:
        record["ok"] = bool(first)
        record["error"] = None if first else "the reply was empty"
        usage = completion.usage
        # A server that reports usage counts the tokens; llama-cpp-python's stream does not, and sends one a chunk.
        record["tokens"] = record["chunks"] if usage.estimated else usage.completion_tokens
        record["tokens_counted_by"] = "chunks" if usage.estimated else "server"
        record["finish_reason"] = completion.finish_reason
    finally:
        record["end"] = time.time()
        backend.close()
    record["first"] = first[0] if first else None
    return record


def student(index: int, settings: Settings, messages: Messages, barrier: Barrier, results: Queue[Any]) -> None:
    """A student's process: ready, wait for the whole room, then ask."""
    try:
        barrier.wait(START_LIMIT_S)
    except threading.BrokenBarrierError:
        results.put({"student": index, "ok": False, "error": "the room did not start together", "start": None})
        return
    results.put(ask(index, settings, messages))


# --- a room -------------------------------------------------------------------------------------------------
def run_room(count: int, settings: Settings, requests: list[Messages]) -> list[dict[str, Any]]:
    """`count` student processes asking at once; a process that dies without an answer is a failure."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, as a notebook kernel is
    barrier = context.Barrier(count)
    results: Queue[Any] = context.Queue()
    processes = [
        context.Process(
            target=student,
            args=(i, settings, requests[(i - 1) % len(requests)], barrier, results),
            name=f"student-{i}",
            daemon=True,
        )
        for i in range(1, count + 1)
    ]
    for process in processes:
        process.start()
    got: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + START_LIMIT_S + settings.timeout * (1 + settings.max_retries)
    while len(got) < count and time.monotonic() < deadline:
        try:
            record = results.get(timeout=0.5)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                with contextlib.suppress(queue.Empty):
                    while len(got) < count:
                        record = results.get(timeout=0.5)
                        got[record["student"]] = record
                break
            continue
        got[record["student"]] = record
    for number, process in enumerate(processes, start=1):
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join()
        if number not in got:
            how = f"exit code {process.exitcode}" if process.exitcode is not None else "no answer in time"
            got[number] = {"student": number, "ok": False, "error": f"the student's process ended ({how})"}
    results.close()
    return [got[n] for n in sorted(got)]


def mark_waits(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Times relative to the room's start, and `waited`: a student's first token came only after another
    student's reply had ended, so the server took it up when a slot was freed (on a server with a slot for everyone,
    every first token comes before any reply ends)."""
    starts = [r["start"] for r in records if r.get("start") is not None]
    began = min(starts) if starts else 0.0
    ends = {r["student"]: r["end"] for r in records if r.get("ok")}
    marked = []
    for r in records:
        m = dict(r)
        if r.get("ok"):
            m["ttft_s"] = r["first"] - r["start"]
            m["total_s"] = r["end"] - r["start"]
            streaming = r["end"] - r["first"]
            m["tokens_per_s"] = (r["tokens"] - 1) / streaming if r["tokens"] > 1 and streaming > 0 else None
            m["first_at_s"] = r["first"] - began
            m["waited"] = any(end <= r["first"] for other, end in ends.items() if other != r["student"])
        marked.append(m)
    return marked


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Criteria:
    """When a room holds: every first token within `max_ttft_s`, every student streaming at `min_rate` or more."""

    max_ttft_s: float = 30.0
    min_rate: float = 2.0

    def holds(self, ttfts: Sequence[float], rates: Sequence[float]) -> bool:
        return bool(ttfts) and max(ttfts) <= self.max_ttft_s and min(rates, default=0.0) >= self.min_rate


def summarize(records: list[dict[str, Any]], criteria: Criteria, reply_tokens: int) -> dict[str, Any]:
    """A room's figures, whether it held, and whether it would with whole replies of `reply_tokens`."""
    marked = mark_waits(records)
    ok = [r for r in marked if r.get("ok")]
    ttfts = [r["ttft_s"] for r in ok]
    rates = [r["tokens_per_s"] for r in ok if r["tokens_per_s"] is not None]
    span = max((r["end"] for r in ok), default=0.0) - min((r["start"] for r in ok), default=0.0)
    room: dict[str, Any] = {
        "students": len(records),
        "failed": len(records) - len(ok),
        "errors": sorted({str(r["error"]) for r in marked if not r.get("ok")}),
        "waited": sum(1 for r in ok if r["waited"]),
        "retries": sum(int(r.get("retries") or 0) for r in marked),
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p95_s": percentile(ttfts, 95) if ttfts else None,
        "ttft_max_s": max(ttfts) if ttfts else None,
        "rate_median": statistics.median(rates) if rates else None,
        "rate_min": min(rates) if rates else None,
        "aggregate_tokens_per_s": sum(r["tokens"] for r in ok) / span if ok and span > 0 else None,
        "holds": len(ok) == len(records) and len(rates) == len(ok) and criteria.holds(ttfts, rates),
        "per_student": marked,
    }
    room["projected"] = project(ok, criteria, reply_tokens) if len(ok) == len(records) else None
    return room


def project(ok: list[dict[str, Any]], criteria: Criteria, reply_tokens: int) -> dict[str, Any] | None:
    """The room re-timed with whole replies: the students served at once (those that did not wait) form a wave
    lasting their median first-token time plus a whole reply at their median rate; the last student waits one such
    wave for each earlier one (as many waves as students per student served at once, rounded up)."""
    served = [r for r in ok if not r["waited"] and r["tokens_per_s"]]
    if not served:
        return None
    ttft = statistics.median(r["ttft_s"] for r in served)
    rate = statistics.median(r["tokens_per_s"] for r in served)
    waves = math.ceil(len(ok) / len(served))
    wave_s = ttft + reply_tokens / rate
    last = ttft + (waves - 1) * wave_s
    return {
        "reply_tokens": reply_tokens,
        "served_at_once": len(served),
        "waves": waves,
        "reply_s": reply_tokens / rate,
        "last_ttft_s": last,
        "holds": last <= criteria.max_ttft_s and rate >= criteria.min_rate,
    }


# --- the server ---------------------------------------------------------------------------------------------
@dataclass
class Served:
    base_url: str
    model: str
    facts: dict[str, Any]


class RoomServer(LlamaServer):
    """The embedded model's llama.cpp server as a room needs it: as p2c starts it, but not ending the reply being
    streamed when another request arrives (llama-cpp-python's default: with it, a room's students cut each other
    off)."""

    def command(self) -> list[str]:
        return [*super().command(), "--interrupt_requests", "False"]


@contextlib.contextmanager
def embedded_server(local_model: str | None, n_ctx: int | None) -> Iterator[Served]:
    """The embedded model (registered name or .gguf) served by a `RoomServer`, with the facts the results record."""
    from p2c_notebook.backends.local.backend import DEFAULT_N_CTX
    from p2c_notebook.backends.local.weights import DEFAULT_LOCAL_MODEL, resolve

    weights = resolve(local_model or DEFAULT_LOCAL_MODEL)
    context = n_ctx or (weights.spec.n_ctx if weights.spec else DEFAULT_N_CTX)
    server = RoomServer(weights.path, weights.name, context)
    began = time.monotonic()
    try:
        base_url = server.start()
        facts = {
            "kind": "embedded (llama-cpp-python's server, one request at a time)",
            "engine": f"llama-cpp-python {_version('llama-cpp-python')}",
            "model": weights.name,
            "model_file": weights.path.name,
            "model_bytes": weights.path.stat().st_size,
            "slots": 1,
            "slots_from": "llama-cpp-python serves one request at a time",
            "n_ctx": context,
            "threads": server.n_threads,
            "interrupt_requests": False,
            "start_s": round(time.monotonic() - began, 1),
            "serve_a_room": (
                f"{sys.executable} -m llama_cpp.server --model {weights.path} --model_alias {weights.name} "
                f"--host 0.0.0.0 --port 8000 --n_ctx {context} --n_threads {server.n_threads} --logits_all False "
                "--interrupt_requests False"
            ),
        }
        yield Served(base_url, weights.name, facts)
    finally:
        server.close()


def url_server(base_url: str, model: str, slots: int | None, n_ctx: int | None) -> Served:
    """Another server: its slots as llama.cpp's /props says (p2c's own probe), else as the user stated them."""
    from p2c_notebook.run.limiter import server_slots

    found = server_slots(base_url)
    facts = {
        "kind": "url",
        "model": model,
        "slots": found or slots,
        "slots_from": "/props" if found else ("--slots" if slots else None),
        "n_ctx": n_ctx,
    }
    return Served(base_url, model, facts)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """The machine the students (and the embedded server) ran on, and how busy it was at the start."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu": cpu,
        "memory_gib": memory,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# --- the measurement ----------------------------------------------------------------------------------------
def measure(
    served: Served,
    students: Sequence[int],
    max_tokens: int,
    criteria: Criteria,
    warmup: bool = True,
    requests: list[Messages] | None = None,
) -> dict[str, Any]:
    from p2c_notebook.run.estimate import prompt_tokens, typical_output

    requests = requests or room_requests()
    settings = student_settings(served.base_url, served.model, max_tokens)
    reply_tokens = typical_output(STAGE, served.model)
    data: dict[str, Any] = {
        "benchmark": "room",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "server": served.facts,
        "request": {
            "call": "the plan regenerated with a student's feedback",
            "paper": str(PAPER.relative_to(ROOT)),
            "prompt_tokens_estimated": [prompt_tokens(m) for m in requests],
            "max_tokens": max_tokens,
            "whole_reply_tokens": reply_tokens,
        },
        "criteria": {"max_ttft_s": criteria.max_ttft_s, "min_tokens_per_s": criteria.min_rate},
        "warmup": None,
        "rooms": [],
    }
    if warmup:  # with the last feedback: the first student's request is not a repeat of it
        # A cold prompt on a CPU is read for minutes: the teacher's call gets the embedded model's deadlines.
        patient = settings.model_copy(update={"timeout": WARMUP_TIMEOUT_S, "read_timeout": WARMUP_TIMEOUT_S})
        progress("warm-up: one call, the paper read from nothing")
        data["warmup"] = mark_waits([ask(0, patient, requests[-1])])[0]
    for count in students:
        progress(f"a room of {count} student(s)")
        data["rooms"].append(summarize(run_room(count, settings, requests), criteria, reply_tokens))
    held = [room["students"] for room in data["rooms"] if room["holds"]]
    projected = [room["students"] for room in data["rooms"] if (room["projected"] or {}).get("holds")]
    data["largest_room_that_holds"] = max(held, default=0)
    data["largest_room_that_holds_whole_replies"] = max(projected, default=0)
    return data


def progress(text: str) -> None:
    """Where a long measurement is (stderr: the report goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _s(value: float | None, unit: str = " s", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def report(data: dict[str, Any]) -> str:
    machine, server, request, criteria = data["machine"], data["server"], data["request"], data["criteria"]
    prompts = request["prompt_tokens_estimated"]
    lines = [
        f"Room benchmark: {server['model']} ({server['kind']}), slots {server['slots'] or 'unknown'}"
        f"{' (' + str(server['slots_from']) + ')' if server.get('slots_from') else ''}, n_ctx {server['n_ctx']}; "
        f"{machine['usable_cores']} cores ({machine['cpu']}), load {_s(machine['load_average_1m'], '', 2)} at start",
        f"Each student: {request['call']} ({request['paper']}; prompts ~{min(prompts):,}-{max(prompts):,} tokens), "
        f"replies capped at {request['max_tokens']} tokens",
        f"A room holds when every student's first token comes within {criteria['max_ttft_s']:g} s and each streams at "
        f">= {criteria['min_tokens_per_s']:g} tokens/s.",
    ]
    warm = data.get("warmup")
    if warm:
        lines.append(
            f"Warm-up (one call, not counted): first token {_s(warm.get('ttft_s'))}, "
            f"{_s(warm.get('tokens_per_s'), ' tokens/s')}" + ("" if warm.get("ok") else f" FAILED: {warm['error']}")
        )
    head = (
        "students  failed  waited  TTFT median  TTFT p95  TTFT max  tok/s median  tok/s min  aggregate tok/s  holds  "
        "whole replies"
    )
    lines += ["", head, "-" * len(head)]
    for room in data["rooms"]:
        projected = room["projected"]
        whole = (
            "-" if projected is None else f"{'yes' if projected['holds'] else 'no'} ({_s(projected['last_ttft_s'])})"
        )
        lines.append(
            f"{room['students']:>8}  {room['failed']:>6}  {room['waited']:>6}  {_s(room['ttft_median_s']):>11}  "
            f"{_s(room['ttft_p95_s']):>8}  {_s(room['ttft_max_s']):>8}  {_s(room['rate_median'], ''):>12}  "
            f"{_s(room['rate_min'], ''):>9}  {_s(room['aggregate_tokens_per_s'], ''):>15}  "
            f"{'yes' if room['holds'] else 'no':>5}  {whole}"
        )
    lines.append("")
    for room in data["rooms"]:
        parts = []
        for r in room["per_student"]:
            if r.get("ok"):
                parts.append(
                    f"#{r['student']} {_s(r['ttft_s'])} to first, {_s(r['tokens_per_s'], ' tok/s')}, "
                    f"{r['tokens']} tokens in {_s(r['total_s'])}" + (" (waited)" if r["waited"] else "")
                )
            else:
                parts.append(f"#{r['student']} FAILED: {r['error']}")
        lines.append(f"{room['students']} student{'s' if room['students'] > 1 else ''}: " + "; ".join(parts))
    lines += [
        "",
        f"Largest room that holds: {data['largest_room_that_holds']} (replies of {request['max_tokens']} tokens); "
        f"with whole replies (~{request['whole_reply_tokens']:,} tokens, the recorded mean of this call), projected: "
        f"{data['largest_room_that_holds_whole_replies']}.",
        "`waited`: a first token that came only after another student's reply ended (the server took it up when a "
        "slot was freed). `whole replies`: holds, and the projected first token of the last student.",
    ]
    if server.get("serve_a_room"):
        lines.append(f"Serve it to a room: {server['serve_a_room']}")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2, 4], help="room sizes, each measured once")
    parser.add_argument("--max-tokens", type=int, default=64, help="each reply's cap (default 64)")
    parser.add_argument("--max-ttft", type=float, default=30.0, help="seconds to a first token for a room to hold")
    parser.add_argument("--min-rate", type=float, default=2.0, help="tokens/s each student must stream at")
    parser.add_argument("--url", help="an OpenAI-compatible server's base URL (…/v1) instead of the embedded model")
    parser.add_argument("--model", help="the model name to ask --url for")
    parser.add_argument("--slots", type=int, help="the server's parallel slots, when /props does not say")
    parser.add_argument("--n-ctx", type=int, help="the context size (embedded: of its server; --url: as recorded)")
    parser.add_argument("--local-model", help="a registered local model or a .gguf path (default: the embedded one)")
    parser.add_argument("--no-warmup", action="store_true", help="do not send the uncounted first call")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/room.json")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args(argv)
    if min(args.students) < 1 or args.max_tokens < 2:
        parser.error("--students must be 1 or more, --max-tokens 2 or more")
    if args.url and not args.model:
        parser.error("--url needs --model (the name the server serves)")
    if not args.url and args.slots not in (None, 1):
        parser.error(
            "the embedded model's server (llama-cpp-python) answers one request at a time: it has 1 slot. For K "
            "slots, serve the GGUF with llama.cpp's own `llama-server -m FILE -np K -c CONTEXT` and pass --url"
        )
    criteria = Criteria(args.max_ttft, args.min_rate)
    try:
        if args.url:
            data = measure(
                url_server(args.url, args.model, args.slots, args.n_ctx),
                args.students,
                args.max_tokens,
                criteria,
                warmup=not args.no_warmup,
            )
        else:
            with embedded_server(args.local_model, args.n_ctx) as served:
                data = measure(served, args.students, args.max_tokens, criteria, warmup=not args.no_warmup)
    except P2CError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(report(data), flush=True)
    target = args.out or (RESULTS / "room.json" if args.save else None)
    if target is not None:
        write_json(target, data)
        print(f"results: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
