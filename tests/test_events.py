"""Trace events read out of a dump's ftrace ring buffer (memscope.kernel.ftrace, the
``events`` command) and out of trace text (memscope.events.text, ``events parse``).

Answer keys, all independent of memscope:

- drgn's own objects on the same dump: the per-CPU ring buffers' counters
  (``global_trace.array_buffer.buffer->buffers[cpu]``) and the kernel's event descriptions
  (``ftrace_events``, each class's ``fields``);
- the guest's own ``/sys/kernel/tracing/trace`` file, printed by the kernel for the same
  buffer just before the dump (tracing stopped first, so that the file and the dump hold the
  same events): every event, field for field, its header's entries counts; ``call_site``
  against drgn's symbol table and ``gfp_flags`` against the kernel's own flag names
  (``gfpflag_names[]``, read with drgn);
- for the text parser, the same real trace text, garbled, cut and reordered by the test.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from kernel_dumps import PatchedTarget, open_dump
from memscope.events import from_ring
from memscope.events.text import parse_file, parse_lines
from memscope.kernel import ftrace
from memscope.kernel.fields import member

#: Lab cases whose workload traces kmem/cma/vmalloc and keeps the trace file as truth.
TRACE_CASES = ["5.10-trace", "6.1-trace", "6.12-trace", "7.2-trace"]


def _drgn_cpu_buffers(prog):
    """(cpu, ring_buffer_per_cpu object) of the global trace instance, read by drgn."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu

    buf = prog["global_trace"].array_buffer.buffer
    for cpu in for_each_possible_cpu(prog):
        cb = buf.buffers[cpu]
        if cb:
            yield cpu, cb


def _local(v) -> int:
    """A local_t's value (struct {atomic_long_t a})."""
    return v.a.counter.value_()


# --- every real kernel: structures and counters -----------------------------------------

def test_the_ring_buffer_counters_are_drgns(real_kernel):
    prog, t = open_dump(real_kernel)
    tb = ftrace.read_trace(t)
    want = {cpu: (cb.nr_pages.value_(), _local(cb.entries), _local(cb.overrun),
                  cb.read.value_(), cb.value_())
            for cpu, cb in _drgn_cpu_buffers(prog)}
    got = {c.cpu: (c.nr_pages, c.entries, c.overrun, c.read, c.address) for c in tb.cpus}
    assert got == want
    assert len(got) == len(list(_drgn_possible(prog)))
    assert tb.problems == []
    # rb_num_of_entries(): what the buffer holds is what the walk found
    for c in tb.cpus:
        assert c.found == c.expected == c.entries - c.overrun - c.read


def _drgn_possible(prog):
    from drgn.helpers.linux.cpumask import for_each_possible_cpu

    return for_each_possible_cpu(prog)


def _drgn_formats(prog, systems=("kmem", "cma", "vmalloc")):
    """id -> (system, name, [(field, type, offset, size, signed)]) of the events of
    SYSTEMS, from drgn walking ftrace_events (common fields first)."""
    from drgn.helpers.linux.list import list_for_each_entry

    common = [(f.name.string_().decode(), f.type.string_().decode(), f.offset.value_(),
               f.size.value_(), bool(f.is_signed.value_()))
              for f in list_for_each_entry("struct ftrace_event_field",
                                           prog["ftrace_common_fields"].address_of_(), "link")]
    tp_flag = prog["TRACE_EVENT_FL_TRACEPOINT"].value_()
    out = {}
    for call in list_for_each_entry("struct trace_event_call",
                                    prog["ftrace_events"].address_of_(), "list"):
        system = call.member_("class").system.string_().decode()
        if system not in systems:
            continue
        name = (call.tp.name if call.flags.value_() & tp_flag else call.name).string_().decode()
        own = [(f.name.string_().decode(), f.type.string_().decode(), f.offset.value_(),
                f.size.value_(), bool(f.is_signed.value_()))
               for f in list_for_each_entry("struct ftrace_event_field",
                                            call.member_("class").fields.address_of_(),
                                            "link")]
        out[call.event.type.value_()] = (system, name,
                                         sorted(common + own, key=lambda f: f[2]))
    return out


def test_the_event_descriptions_are_the_kernels(real_kernel):
    prog, t = open_dump(real_kernel)
    want = _drgn_formats(prog)
    assert len(want) >= 10  # kmem alone has more than ten events on every lab kernel
    got = ftrace.event_formats(t, [], want)
    assert {i: (f.system, f.name, [(x.name, x.type, x.offset, x.size, x.signed)
                                   for x in f.fields]) for i, f in got.items()} == want
    names = {f.name for f in got.values()}
    assert {"mm_page_alloc", "mm_page_free", "mm_page_pcpu_drain", "kmalloc",
            "kmem_cache_free"} <= names


# --- the trace cases: the dump's events against the guest's trace file ---------------------

@pytest.fixture(scope="module", params=TRACE_CASES)
def trace_case_name(request):
    return request.param


@pytest.fixture(scope="module")
def trace_case(trace_case_name, lab_case):
    return lab_case(trace_case_name)


def _gfp_value(prog, text: str) -> int:
    """The gfp mask that show_gfp_flags() printed as TEXT (names joined by '|', a hex
    remainder), from the kernel's own table gfpflag_names[] (mm/debug.c)."""
    names = {}
    for e in prog["gfpflag_names"]:
        if not e.name:
            break
        names[e.name.string_().decode()] = e.mask.value_()
    if text == "none":
        return 0
    v = 0
    for part in text.split("|"):
        v |= int(part, 16) if part.startswith("0x") else names[part]
    return v


def _pS(prog, addr: int) -> tuple[str, int, int]:
    """(name, offset, ELF size) of ADDR from drgn's symbol table."""
    s = prog.symbol(addr)
    return s.name, addr - s.address, s.size


def _same_symbol(text: str, sym: tuple[str, int, int]) -> bool:
    """Whether %pS's TEXT (name+0xoff/0xsize) names SYM: same name and offset; kallsyms'
    size runs to the next symbol, so it is at least the ELF symbol's size."""
    name, _, rest = text.partition("+")
    off, _, size = rest.partition("/")
    return (name, int(off, 16)) == sym[:2] and int(size, 16) >= sym[2]


def test_events_from_the_dump_are_the_guests_trace_file(trace_case):
    prog, t = open_dump(trace_case)
    tb = ftrace.read_trace(t)
    assert tb.problems == []
    dump = from_ring(tb)
    text = parse_lines(trace_case.truth_text("trace/label").splitlines())
    assert text.garbled == 0 and text.unknown == 0 and text.out_of_order == 0
    # the header's counts are the kernel's: in the buffer / written (overwritten included)
    assert text.entries == (sum(c.found for c in tb.cpus),
                            sum(c.entries for c in tb.cpus))
    assert len(dump) == len(text.events) > 1000
    gfp_cache: dict[str, int] = {}
    sym_cache: dict[int, tuple] = {}
    for d, x in zip(dump, text.events):
        # trace_print_context(): ns2usecs() rounds to the microsecond
        assert (d.cpu, (d.ts + 500) // 1000 * 1000, d.pid, d.name) == \
               (x.cpu, x.ts, x.pid, x.name)
        for k, v in x.fields.items():
            if k not in d.fields:
                continue  # printed from other fields (accounted=, page= from pfn)
            if v == "":
                # Debian's 6.1.192 prints every gfp_flags (__print_flags) and every
                # __get_str() string (kmem_cache_free's name) empty in its trace file,
                # where the dump's entries hold the values: nothing to compare
                assert trace_case.kernel == "6.1" and k in ("gfp_flags", "name"), (d, x)
                continue
            got = d.fields[k]
            if k == "call_site":
                if got not in sym_cache:
                    sym_cache[got] = _pS(prog, got)
                assert _same_symbol(v, sym_cache[got]), (v, sym_cache[got], d, x)
                continue
            elif k == "gfp_flags":
                if v not in gfp_cache:
                    gfp_cache[v] = _gfp_value(prog, v)
                v = gfp_cache[v]
            elif k in ("ptr", "page") and text.hashed_pointers:
                continue  # 5.10 has no hash-ptr option: %p is hashed
            assert got == v, (k, d, x)


def test_the_window_since_an_earlier_dump_is_the_end_of_the_trace_file(trace_case_name,
                                                                      trace_case, lab_case):
    """The events of the final dump's buffer written after the "after" snapshot's dump
    are the last (entries_final - entries_after) events of each CPU in the guest's trace
    file, counters read with drgn."""
    earlier = lab_case(trace_case_name, "after")
    prog_a, ta = open_dump(earlier)
    prog_b, tb_ = open_dump(trace_case)
    a, b = ftrace.read_trace(ta), ftrace.read_trace(tb_)
    events, parts = ftrace.window(a, b)
    written = {cpu: _local(cb.entries) for cpu, cb in _drgn_cpu_buffers(prog_b)}
    before = {cpu: _local(cb.entries) for cpu, cb in _drgn_cpu_buffers(prog_a)}
    text = parse_lines(trace_case.truth_text("trace/label").splitlines())
    for p in parts:
        assert p.written == written[p.cpu] - before[p.cpu]
        assert p.lost == 0 and p.found == p.written
        mine = [e for e in text.events if e.cpu == p.cpu]
        tail = mine[len(mine) - p.written:] if p.written else []
        got = [e for e in events if e.cpu == p.cpu]
        assert [((e.ts + 500) // 1000 * 1000, e.pid) for e in got] == \
               [(e.ts, e.pid) for e in tail]


def test_the_busy_window_is_a_million_events_as_the_guest_counted_them(lab_case):
    """The 6.12-trace-busy case (the throughput benchmark's window): the final dump's
    buffer holds, CPU by CPU, the events the guest's own per-CPU stats count (read after
    tracing stopped, before the final dump), nothing overwritten; the window between
    "before" and "after" is over a million events, none lost, numbered without a gap."""
    snap = lab_case("6.12-trace-busy")
    _, t = open_dump(snap)
    tb = ftrace.read_trace(t)
    stats = snap.truth_text("tracestats/label").splitlines()
    entries = [int(x.split()[1]) for x in stats if x.startswith("entries:")]
    overrun = [int(x.split()[1]) for x in stats if x.startswith("overrun:")]
    assert tb.problems == [] and overrun == [0] * len(entries)
    assert [c.found for c in tb.cpus] == entries
    _, ta = open_dump(lab_case("6.12-trace-busy", "before"))
    _, tafter = open_dump(lab_case("6.12-trace-busy", "after"))
    events, parts = ftrace.window(ftrace.read_trace(ta), ftrace.read_trace(tafter))
    assert len(events) == sum(p.written for p in parts) > 1_000_000
    assert all(p.lost == 0 for p in parts)
    for p in parts:
        seq = events.seq[events.cpu == p.cpu]
        assert (seq[1:] - seq[:-1] == 1).all()


def test_a_later_dump_of_another_boot_is_refused(lab_case):
    """window() refuses two dumps whose buffers cannot be one boot's: fewer entries in
    the later one."""
    _, t1 = open_dump(lab_case("6.12-trace"))
    _, t0 = open_dump(lab_case("6.12-snapshots"))
    with pytest.raises(ftrace.TargetError, match="not a later dump"):
        ftrace.window(ftrace.read_trace(t1), ftrace.read_trace(t0))


# --- corruption: a ring buffer with a broken page ----------------------------------------

def _busiest(lab_case):
    """The 6.12 trace case's final dump (its real Target), its buffer as read, the CPU
    with the most events, that CPU's commit page (buffer_page and data page addresses)
    and the ring buffer layouts."""
    _, real = open_dump(lab_case("6.12-trace"))
    tb = ftrace.read_trace(real)
    c = max(tb.cpus, key=lambda c: c.found)
    lay = ftrace._layouts(real)
    raw = real.read(c.address, lay.cpu_size)
    bpage = int.from_bytes(raw[lay.cpu["commit_page"].offset:][:8], "little")
    data = real.read_u64(bpage + lay.bpage["page"].offset)
    return real, tb, c.cpu, bpage, data, lay


def test_a_page_with_a_commit_past_its_end_is_skipped_and_counted(lab_case):
    real, tb, cpu, bpage, data, lay = _busiest(lab_case)
    t = PatchedTarget(real)
    t.patch(data + lay.commit_off, 1 << 20)
    got = ftrace.read_trace(t)
    c = next(c for c in got.cpus if c.cpu == cpu)
    assert [p.kind for p in got.problems] == ["corrupt"]
    assert "past the page" in got.problems[0].message
    entries = real.read_u64(bpage + lay.bpage["entries"].offset) & 0xFFFFF
    assert entries > 0
    assert c.skipped == entries and c.found + c.skipped == c.expected
    # every other CPU's events are untouched
    others = [e for e in tb.events if e.cpu != cpu]
    assert [e for e in got.events if e.cpu != cpu] == others


def test_a_garbled_event_header_ends_its_page_only(lab_case):
    real, tb, cpu, bpage, data, lay = _busiest(lab_case)
    t = PatchedTarget(real)
    # a data event of type_len 0 whose length (array[0]) runs far past the page
    t.patch(data + lay.data_off, 0xFFFF0 << 32)
    got = ftrace.read_trace(t)
    assert [p.kind for p in got.problems] == ["corrupt"]
    c = next(c for c in got.cpus if c.cpu == cpu)
    assert c.found + c.skipped == c.expected and c.skipped > 0


def test_a_ring_that_loops_on_itself_is_bounded(lab_case):
    real, tb, cpu, _, _, lay = _busiest(lab_case)
    c = next(c for c in tb.cpus if c.cpu == cpu)
    head = real.read_u64(c.address + lay.cpu["head_page"].offset)
    assert c.pages > 2  # the head page is not the commit page
    t = PatchedTarget(real)
    t.patch(head + lay.bpage["list"].offset, head + lay.bpage["list"].offset)
    got = ftrace.read_trace(t)  # returns: the walk is bounded by nr_pages
    kinds = {p.kind for p in got.problems}
    assert kinds & {"cycle", "broken_link", "too_long"}


def test_events_on_a_file_that_is_not_a_dump_is_one_line(lab_case):
    snap = lab_case("6.12")
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmlinux), "-s",
                        str(snap.vmlinux), "events"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


# --- text: garbage, cut, reordered ---------------------------------------------------------

def _trace_lines(lab_case, case="6.12-trace") -> list[str]:
    return lab_case(case).truth_text("trace/label").splitlines()


def test_every_line_of_each_kernels_trace_file_parses(trace_case):
    lines = trace_case.truth_text("trace/label").splitlines()
    tt = parse_lines(lines)
    events = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    assert tt.garbled == 0 and tt.unknown == 0
    assert len(tt.events) == len(events) == tt.entries[0]
    names = {e.name for e in tt.events}
    assert {"mm_page_alloc", "mm_page_free", "kmalloc", "kfree"} <= names
    # every page event has an int pfn and order (5.10 prints pfn in decimal, 6.1+ in hex)
    for e in tt.events:
        if e.name in ("mm_page_alloc", "mm_page_free", "mm_page_pcpu_drain"):
            assert isinstance(e.fields["pfn"], int) and isinstance(e.fields["order"], int)


def test_garbage_lines_are_counted_never_fatal(lab_case, tmp_path):
    lines = _trace_lines(lab_case)
    rng = random.Random(13)
    garbage = ["".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 90)))
               for _ in range(200)]
    garbage = [g for g in garbage if g.strip() and not g.lstrip().startswith("#")]
    mixed = lines[:100] + garbage + lines[100:]
    f = tmp_path / "t"
    f.write_bytes("\n".join(mixed).encode() + b"\n\xff\xfe\x00binary\n")
    tt = parse_file(f)
    base = parse_lines(lines)
    assert len(tt.events) == len(base.events)
    # random printable text can still look like an event line by chance: none here
    assert tt.garbled == len(garbage) + 1
    assert tt.garbled_lines[0][0] == 101


def test_a_cut_file_keeps_what_came_before_the_cut(lab_case, tmp_path):
    text = "\n".join(_trace_lines(lab_case))
    cut = text[:len(text) // 2]
    last = cut.rsplit("\n", 1)[1]
    f = tmp_path / "t"
    f.write_text(cut)
    tt = parse_file(f)
    full = parse_lines(text.splitlines())
    n = len(tt.events)
    assert tt.events[:n - 1] == full.events[:n - 1]
    # the cut line is an event with fewer fields, or garbled: never an error
    assert tt.garbled + n == len([ln for ln in cut.splitlines()
                                  if ln.strip() and not ln.startswith("#")])
    assert last


def test_reordered_lines_are_counted(lab_case):
    lines = [ln for ln in _trace_lines(lab_case) if not ln.startswith("#")]
    base = parse_lines(lines)
    cpu = base.events[0].cpu
    idx = [i for i, e in enumerate(base.events) if e.cpu == cpu]
    # swap two lines of one CPU whose times differ
    i, j = next((a, b) for a, b in zip(idx, idx[1:])
                if base.events[a].ts != base.events[b].ts)
    swapped = list(lines)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    tt = parse_lines(swapped)
    assert base.out_of_order == 0
    assert tt.out_of_order == 1
    assert len(tt.events) == len(base.events)


def test_the_columnar_parse_is_the_line_by_line_parse(trace_case):
    """parse_lines matches the whole text at once into columns; the line-by-line parse
    (one regex match, fields and Event per line) must give the same events, field types
    and counts on each kernel's trace file, garbled, cut, reordered and padded."""
    from memscope.events.text import _parse_slow

    lines = trace_case.truth_text("trace/label").splitlines()
    rng = random.Random(6)
    variants = [lines]
    for _ in range(3):
        ls = list(lines)
        for _ in range(200):
            i, op = rng.randrange(len(ls)), rng.randrange(7)
            if op == 0:
                ls.insert(i, "".join(chr(rng.randrange(1, 127)) for _ in
                                     range(rng.randrange(90))).replace("\n", " "))
            elif op == 1:
                ls[i] = ls[i][:rng.randrange(len(ls[i]) + 1)]
            elif op == 2:
                j = rng.randrange(len(ls))
                ls[i], ls[j] = ls[j], ls[i]
            elif op == 3:
                ls.insert(i, f"CPU:{rng.randrange(4)} [LOST {rng.randrange(999)} EVENTS]")
            elif op == 4:
                ls[i] = ls[i].replace("kfree:", "sys:weird:") + "\r\n"
            elif op == 5:
                ls[i] = ls[i].replace(".", ".1234567", 1)
            else:
                ls[i] = "\t" + ls[i].replace(" ", "\t ", 2)
        variants.append(ls)
    for ls in variants:
        fast, slow = parse_lines(ls), _parse_slow(ls)
        assert fast.summary() == slow.summary()
        assert len(fast.events) == len(slow.events) > 1000
        for a, b in zip(fast.events, slow.events):
            assert a == b
            assert [type(v) for v in a.fields.values()] == [type(v) for v in b.fields.values()]
    assert variants[1] != lines and parse_lines(variants[1]).garbled > 0


def test_lost_event_markers_are_counted():
    tt = parse_lines(["CPU:1 [LOST 42 EVENTS]", "CPU:1 [LOST 8 EVENTS]",
                      "CPU:0 [LOST 1 EVENTS]"])
    assert tt.lost == {1: 50, 0: 1} and tt.events == [] and tt.garbled == 0


def test_trace_cmd_report_lines_parse(lab_case):
    """trace-cmd report prints the same context without the latency column (its own
    lines: "version = 6", "cpus=2", "CPU 0 is empty" are skipped)."""
    lines = [ln for ln in _trace_lines(lab_case) if not ln.startswith("#")]
    base = parse_lines(lines)
    report = ["version = 6", "cpus=2", "CPU 3 is empty"]
    for ln in lines:
        head, _, rest = ln.partition("] ")
        report.append(head + "] " + rest.split(None, 1)[1])  # drop the flags column
    tt = parse_lines(report)
    assert tt.garbled == 0
    assert tt.events == base.events


def test_events_parse_on_a_missing_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "events", "parse",
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "No such file" in r.stderr


def test_offsets_used_by_the_walk_are_the_debug_infos(real_kernel):
    """The member paths the walk probes exist on every lab kernel (v5.6+ names)."""
    _, t = open_dump(real_kernel)
    assert member(t, "struct trace_array", "array_buffer.buffer").size == 8


def test_events_command_since_an_earlier_dump(lab_case):
    """The command line's JSON: the window's events and counts, with the per-CPU entries
    counters of both dumps read by drgn."""
    import json

    a, b = lab_case("6.12-trace", "after"), lab_case("6.12-trace")
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(b.vmcore), "-s",
                        str(b.vmlinux), "events", "--since", str(a.vmcore), "-f", "json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    prog_a, _ = open_dump(a)
    prog_b, _ = open_dump(b)
    before = {cpu: _local(cb.entries) for cpu, cb in _drgn_cpu_buffers(prog_a)}
    after = {cpu: _local(cb.entries) for cpu, cb in _drgn_cpu_buffers(prog_b)}
    assert {w["cpu"]: w["written"] for w in data["window"]} == \
           {cpu: after[cpu] - before[cpu] for cpu in after}
    assert data["lost"] == 0 and data["problems"] == []
    assert len(data["events"]) == sum(after.values()) - sum(before.values()) > 0
    assert [e["ts"] for e in data["events"]] == sorted(e["ts"] for e in data["events"])
