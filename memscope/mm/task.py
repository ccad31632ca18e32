"""Tasks (``struct task_struct``) and what ``ps`` and /proc/PID/status say of them.

- The thread-group leaders are on ``init_task.tasks``; a group's threads on
  ``signal->thread_head`` through ``task->thread_node`` (include/linux/sched/signal.h
  ``for_each_process_thread()``), both walked bounded by ``nr_threads``.
- The state letter is fs/proc/array.c ``task_state_array[task_state_index()]``:
  ``fls((__state | exit_state) & TASK_REPORT)``, TASK_IDLE reported as ``I``, a task
  waiting on an rtlock or frozen as ``D``.  ``task_struct.state`` became ``__state`` in
  v5.14 (commit 2f064a59a11f).  The TASK_* bits are #defines (not in the debug info); the
  ones used here have kept their values since v5.10 but TASK_FROZEN (v6.1, commit
  f5d39b020809).
- The CPU: ``task_struct.cpu``, or ``thread_info.cpu`` since v5.16 (commit bcf9033e5449).
- RSS as /proc/PID/status prints it: ``mm->rss_stat.count[]`` (atomic_long) up to v6.1
  (with SPLIT_RSS_COUNTING a task's cached deltas are not in it, nor in /proc); since
  v6.2 (commit f1a7941243c1) ``mm->rss_stat[]`` are ``percpu_counter``s, which /proc
  sums with every CPU's part (``get_mm_counter_sum()``, "mm: fix the inaccurate memory
  statistics issue for users", v6.16, in the Debian 6.12 and 7.2 kernels; kernels
  6.2-6.15 without it print the global part alone, which can be off by the per-CPU
  batches).
- The name /proc prints (``Name:`` in status; fs/proc/array.c ``proc_task_name()``): a
  workqueue worker's (PF_WQ_WORKER) is ``wq_worker_comm()``'s: its comm (to v6.9) or
  ``format_worker_id()``'s ``kworker/CPU:ID[H]``, ``kworker/uPOOL:ID``,
  ``kworker/R-WQ`` (v6.10; told by the function ``format_worker_id`` in the symbols;
  commit id unverified), then ``+desc`` while it runs a work item, ``-desc`` after; another kernel
  thread's its ``kthread->full_name`` when it has one (v5.17, commit d6986ce24fc0,
  "kthread: dynamically allocate memory to store kthread's full name"); else the comm.
  ``to_kthread()`` is ``task->worker_private`` since v5.17 (commit e32cf5dfbe22), before
  ``task->set_child_tid``.  A newline and a backslash are escaped (``seq_escape_str()``).
"""

from __future__ import annotations

import dataclasses

from ..kernel import list as klist, percpu
from ..kernel.fields import member, offsetof, read_member
from ..kernel.problem import Problem
from ..target.base import TargetError
from .context import KernelContext

__all__ = ("Task", "find_task", "tasks")

PF_KTHREAD = 0x00200000
PF_WQ_WORKER = 0x00000020
# include/linux/sched.h
TASK_REPORT = 0x7F  # RUNNING .. PARKED: the states /proc reports
TASK_IDLE = 0x2 | 0x400  # TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_RTLOCK_WAIT = 0x1000
TASK_FROZEN = 0x8000
_STATES = "RSDTtXZPI"  # task_state_array[]: running, sleeping, disk sleep, stopped, ...
#: The mm counters' indices (include/linux/mm_types_task.h, an anonymous enum: not
#: reachable by name in the debug info; in this order since v4.5, commit eca56ff906bd)
_MM_COUNTERS = ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SWAPENTS", "MM_SHMEMPAGES")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: ``task`` the ``struct task_struct`` address; ``pid`` (the thread's id),
    ``tgid`` (the process's), ``ppid`` (the real parent's tgid); ``comm``; ``state`` the
    letter /proc prints (R, S, D, T, t, X, Z, P, I); ``cpu`` the CPU it last ran on;
    ``kthread`` a kernel thread (PF_KTHREAD); ``mm`` its ``struct mm_struct`` or 0;
    ``rss`` pages per counter as /proc/PID/status prints them (``{"file", "anon", "swap",
    "shmem"}``; empty without an mm); ``name`` what /proc prints as its name (status's
    ``Name:``; see the module: a kworker's workqueue, a kernel thread's full name), ""
    unless :func:`tasks` was asked for names."""

    task: int
    pid: int
    tgid: int
    ppid: int
    comm: str
    state: str
    cpu: int
    kthread: bool
    mm: int
    rss: dict[str, int]
    name: str = ""

    @property
    def rss_pages(self) -> int:
        """VmRSS in pages: file + anon + shmem."""
        return self.rss["file"] + self.rss["anon"] + self.rss["shmem"]


def _state_letter(state: int, exit_state: int) -> str:
    """task_state_index() as a letter of task_state_array[]."""
    s = (state | exit_state) & TASK_REPORT
    if state & TASK_IDLE == TASK_IDLE:
        s = TASK_REPORT + 1
    if state & (TASK_RTLOCK_WAIT | TASK_FROZEN):
        s = 0x2
    return _STATES[s.bit_length()]


class _Reader:
    def __init__(self, ctx: KernelContext, names: bool = False):
        t = self.t = ctx.t
        self.names = names
        self.ts = t.layout("struct task_struct")
        self.state = self.ts["__state" if self.ts.has("__state") else "state"]
        self.cpu = member(t, "struct task_struct",
                          "cpu" if self.ts.has("cpu") else "thread_info.cpu")
        self.mm = t.layout("struct mm_struct")
        rss = self.mm["rss_stat"]
        self.counters = {name: i for i, name in enumerate(_MM_COUNTERS)}
        if rss.type_name.startswith("struct percpu_counter"):
            # v6.2: struct percpu_counter rss_stat[NR_MM_COUNTERS]
            pc = t.layout("struct percpu_counter")
            self.percpu = (pc.size, pc.offset("count"), pc.offset("counters"))
        else:
            self.percpu = None
        self.rss_off = rss.offset
        self.rss_count = 0 if self.percpu else offsetof(t, "struct mm_rss_stat", "count")

    def task(self, addr: int) -> Task:
        t = self.t
        buf = t.read(addr, self.ts.size)
        comm = bytes(buf[self.ts.offset("comm"):self.ts.offset("comm") + 16])
        parent = read_member(self.ts["real_parent"], buf)
        ppid = t.read_u32(parent + self.ts.offset("tgid")) if parent else 0
        mm = read_member(self.ts["mm"], buf)
        rss = self._rss(mm) if mm else {}
        flags = read_member(self.ts["flags"], buf)
        comm = comm.split(b"\0", 1)[0]
        return Task(addr, read_member(self.ts["pid"], buf), read_member(self.ts["tgid"], buf),
                    ppid, comm.decode(errors="replace"),
                    _state_letter(read_member(self.state, buf),
                                  read_member(self.ts["exit_state"], buf)),
                    read_member(self.cpu, buf), bool(flags & PF_KTHREAD), mm, rss,
                    _escape(self._proc_name(buf, flags, comm)) if self.names else "")

    def _to_kthread(self, buf: bytes) -> int:
        return read_member(self.ts["worker_private" if self.ts.has("worker_private")
                                   else "set_child_tid"], buf)

    def _proc_name(self, buf: bytes, flags: int, comm: bytes) -> bytes:
        """proc_task_name() before escaping (see the module)."""
        t = self.t
        try:
            if flags & PF_WQ_WORKER:
                return self._wq_worker_comm(buf, comm)
            if flags & PF_KTHREAD and t.has_type("struct kthread") and \
                    t.layout("struct kthread").has("full_name"):
                kthread = self._to_kthread(buf)
                full = t.read_u64(kthread + t.layout("struct kthread").offset("full_name")) \
                    if kthread else 0
                if full:
                    return t.read_cstr(full, 63).encode()
        except TargetError:
            pass  # a worker or kthread struct not in the dump: its comm
        return comm

    def _wq_worker_comm(self, buf: bytes, comm: bytes) -> bytes:
        """wq_worker_comm() (kernel/workqueue.c), the worker read in one piece."""
        t = self.t
        kthread = self._to_kthread(buf)
        worker = t.read_u64(kthread + t.layout("struct kthread").offset("data"))
        w = t.layout("struct worker")
        wbuf = t.read(worker, w.size)
        pool = read_member(w["pool"], wbuf)
        name = comm
        if t.has_symbol("format_worker_id"):  # the name is rebuilt each time (v6.10)
            p = t.layout("struct worker_pool")
            rescue = read_member(w["rescue_wq"], wbuf)
            wid = read_member(w["id"], wbuf)
            if rescue:
                wq = t.read_cstr(rescue + t.layout("struct workqueue_struct").offset("name"), 64)
                name = f"kworker/R-{wq}".encode()
            elif pool:
                pbuf = t.read(pool, p.size)
                cpu = read_member(p["cpu"], pbuf)
                if cpu >= 0:
                    attrs = read_member(p["attrs"], pbuf)
                    nice = t.read_int(attrs + t.layout("struct workqueue_attrs").offset("nice"),
                                      4, signed=True)
                    name = f"kworker/{cpu}:{wid}{'H' if nice < 0 else ''}".encode()
                else:
                    name = f"kworker/u{read_member(p['id'], pbuf)}:{wid}".encode()
            else:
                name = b"kworker/dying"
        if pool:
            off = w.offset("desc")
            desc = wbuf[off:off + w["desc"].size].split(b"\0", 1)[0]
            if desc:
                busy = read_member(w["current_work"], wbuf)
                name += (b"+" if busy else b"-") + desc
        return name[:63]

    def _rss(self, mm: int) -> dict[str, int]:
        t = self.t
        rss = {}
        for name, i in self.counters.items():
            key = name[3:].lower().replace("pages", "").replace("swapents", "swap")
            if self.percpu:
                size, count_off, counters_off = self.percpu
                at = mm + self.rss_off + i * size
                count = t.read_int(at + count_off, 8, signed=True)
                parts = sum(t.read_int(p, 4, signed=True)
                            for _, p in percpu.per_cpu_ptrs(t, t.read_u64(at + counters_off)))
                rss[key] = max(count + parts, 0)  # percpu_counter_sum_positive()
            else:
                v = t.read_int(mm + self.rss_off + self.rss_count + 8 * i, 8, signed=True)
                rss[key] = max(v, 0)
        return rss


def _escape(name: bytes) -> str:
    """seq_escape_str(m, name, ESCAPE_SPACE | ESCAPE_SPECIAL, "\\n\\\\") of fs/proc/array.c:
    only the characters of the last argument are escaped, a newline as ``\\n`` and a
    backslash as ``\\\\``."""
    return name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").decode(errors="replace")


def tasks(ctx: KernelContext, threads: bool = False,
          problems: list[Problem] | None = None, names: bool = False) -> list[Task]:
    """Every process (``for_each_process()``), or with THREADS every thread
    (``for_each_process_thread()``), in the kernel's list order: the idle tasks first
    (``init_task``, CPU 0's, then each other CPU's ``runqueues.idle``: pid 0, on no list).

    :param problems: where the bounded list walks put what they find (a cycle, a broken
        link); None: they are dropped.
    :param names: fill :attr:`Task.name` (a few more reads per kernel thread).
    :raises TargetError: a type or member is missing from the debug info."""
    t = ctx.t
    problems = [] if problems is None else problems
    r = _Reader(ctx, names)
    bound = _bound(t)
    leaders = _leaders(ctx, r, bound, problems)
    if not threads:
        return [r.task(a) for a in leaders]
    sig = t.layout("struct signal_struct")
    out = []
    for leader in leaders:
        signal = t.read_u64(leader + r.ts.offset("signal"))
        members = list(klist.list_for_each_entry(
            t, "struct task_struct", signal + sig.offset("thread_head"), "thread_node",
            bound=bound, problems=problems, where=f"task {leader:#x} signal->thread_head"))
        out += [r.task(a) for a in (members or [leader])]
    return out


def _bound(t) -> int:
    return t.read_u32(t.symbol("nr_threads")) + 1 if t.has_symbol("nr_threads") else 1 << 22


def _leaders(ctx: KernelContext, r: _Reader, bound: int, problems: list[Problem]) -> list[int]:
    """The task_struct addresses of the idle tasks and of init_task.tasks, in order."""
    t = ctx.t
    init = t.symbol("init_task")
    return [init, *_other_idle_tasks(ctx, init),
            *klist.list_for_each_entry(t, "struct task_struct", init + r.ts.offset("tasks"),
                                       "tasks", bound=bound, problems=problems,
                                       where="init_task.tasks")]


def _other_idle_tasks(ctx: KernelContext, init: int) -> list[int]:
    """The idle tasks of the CPUs other than the boot CPU (``swapper/N``: pid 0, on no
    task list; ``per_cpu(runqueues, cpu).idle``), as crash's ``ps`` lists them."""
    from ..kernel.cpumask import for_each_possible_cpu

    t = ctx.t
    if not t.has_symbol("runqueues"):
        return []
    off = t.layout("struct rq").offset("idle")
    out = []
    for cpu in for_each_possible_cpu(t):
        idle = t.read_u64(percpu.per_cpu_ptr(t, t.symbol("runqueues"), cpu) + off)
        if idle and idle != init:
            out.append(idle)
    return out


class NoSuchTask(TargetError):
    """:func:`find_task` found no process with the pid (the message says whether the task
    list's walk stopped before its end)."""


def find_task(ctx: KernelContext, pid: int) -> Task:
    """The thread-group leader whose tgid is PID (only each task's ``tgid`` is read until
    it is found).

    :raises NoSuchTask: no such process, or the task list's walk stopped before it was
        found (a broken or cyclic list)
    :raises TargetError: a read failed (FaultError: a page the dump does not hold)."""
    t = ctx.t
    r = _Reader(ctx)
    tgid = r.ts["tgid"]
    problems: list[Problem] = []
    for a in _leaders(ctx, r, _bound(t), problems):
        if int.from_bytes(t.read(a + tgid.offset, 4), "little", signed=True) == pid:
            return r.task(a)
    if problems and t.missing_pages_read():
        # the walk stopped at a page the dump does not hold: a read failure, not an answer
        raise TargetError(f"pid {pid} not found before the task list's walk stopped at a "
                          f"page the dump does not hold: {problems[0].message}")
    if problems:  # the walk stopped early: the process may be past where it stopped
        raise NoSuchTask(f"pid {pid} not found before the task list's walk stopped: "
                         f"{problems[0].message}")
    raise NoSuchTask(f"no process with pid {pid}")
