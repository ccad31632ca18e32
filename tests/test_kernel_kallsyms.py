"""memscope.kernel.kallsyms (``%pS``) on every lab kernel.

Answer keys: the guest's own /proc/vmallocinfo, whose caller column is the kernel's
``%pS`` of each area's ``vm_struct.caller`` (the areas walked here with drgn, not
memscope); drgn's kallsyms loader for vmlinux (addresses, names); drgn's reading of each
module's ELF symbol table, with the kernel's size rule of find_kallsyms_symbol() (up to
the next symbol, else the end of the module's text) applied to drgn's symbols."""

from __future__ import annotations

import random

from drgn.helpers.linux.kallsyms import (_linux_helper_load_builtin_kallsyms,
                                         for_each_module, module_kallsyms)
from drgn.helpers.linux.list import list_for_each_entry

from kernel_dumps import open_dump
from memscope.mm.context import KernelContext
from memscope.kernel import kallsyms



def _busy_vm_callers(prog) -> list[int]:
    """vm_struct.caller of every busy vmap_area that has a vm_struct, walked with drgn:
    the global vmap_area_list up to v6.8, each vmap_node's busy list from v6.9."""
    try:
        heads = [prog["vmap_area_list"].address_of_()]
    except KeyError:
        nodes = prog["vmap_nodes"]
        heads = [nodes[i].busy.head.address_of_() for i in range(prog["nr_vmap_nodes"])]
    out = []
    for head in heads:
        for va in list_for_each_entry("struct vmap_area", head, "list"):
            # VMAP_RAM areas (vm_map_ram) have no vm_struct; the union holds flags then
            if hasattr(va, "flags") and va.flags.value_() & 1:
                continue
            if va.vm:
                out.append(va.vm.caller.value_())
    return out


def test_vmalloc_callers_print_as_the_kernel_printed_them(real_kernel):
    prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    truth = {f[2] for f in (line.split() for line in
                            real_kernel.truth_text("vmallocinfo").splitlines())
             if len(f) > 2 and f[2] != "unpurged"}  # "unpurged vm_area": no caller
    got = {kallsyms.format_symbol(ctx, c) for c in _busy_vm_callers(prog)}
    assert len(truth) > 10
    assert got == truth


def test_vmlinux_symbols_agree_with_drgns_kallsyms(real_kernel):
    prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    # drgn's own kallsyms decoder, given the tables' addresses from the debug info
    # (load_vmlinux_kallsyms() takes them from VMCOREINFO, which has them from v6.0)
    where = []
    for name in ("kallsyms_names", "kallsyms_token_table", "kallsyms_token_index",
                 "kallsyms_num_syms", "kallsyms_offsets", "kallsyms_relative_base",
                 "kallsyms_addresses", "_stext"):
        try:
            where.append(prog.symbol(name).address)
        except LookupError:
            where.append(0)
    index = _linux_helper_load_builtin_kallsyms(prog, *where)
    lo, hi = t.symbol("_stext"), t.symbol("_etext")
    every = index(prog, None, None, False)
    aliases: dict[int, set[str]] = {}
    for s in every:
        aliases.setdefault(s.address, set()).add(s.name)
    syms = [s for s in every if lo <= s.address < hi and s.size]
    rng = random.Random(0)
    for s in rng.sample(syms, 2000):
        addr = s.address + rng.randrange(s.size)
        got = kallsyms.symbolize(ctx, addr)
        want = index(prog, None, addr, True)
        assert got is not None and got.module is None
        # aliases: the kernel takes the first name at the address, drgn may return another
        assert (got.address, got.size, got.offset) == (want[0].address, want[0].size,
                                                        addr - want[0].address), s.name
        assert got.name in aliases[got.address]


def _module_text_end(mod) -> int:
    try:
        text = mod.mem[prog_enum(mod, "MOD_TEXT")]
        return text.base.value_() + text.size.value_()
    except AttributeError:
        return mod.core_layout.base.value_() + mod.core_layout.text_size.value_()


def prog_enum(obj, name: str) -> int:
    return obj.prog_.constant(name).value_()


def test_module_symbols_agree_with_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    n = 0
    for mod in for_each_module(prog):
        name = mod.name.string_().decode()
        syms = sorted((s for s in module_kallsyms(mod) if s.name and not s.name.startswith("$")),
                      key=lambda s: s.address)
        text_end = _module_text_end(mod)
        for i, s in enumerate(syms):
            if s.size == 0 or not s.address < text_end:
                continue
            later = [x.address for x in syms if x.address > s.address]
            size = min(later + [text_end]) - s.address
            addr = s.address + min(s.size, size) // 2
            got = kallsyms.symbolize(ctx, addr)
            assert got is not None, s.name
            assert (got.module, got.address, got.size) == (name, s.address, size), s.name
            n += 1
    assert n > 5


def test_an_address_outside_the_kernel_and_modules_prints_bare(real_kernel):
    prog, t = open_dump(real_kernel)
    ctx = KernelContext(t)
    assert kallsyms.format_symbol(ctx, 0x1000) == "0x1000"
    sym = kallsyms.symbolize(ctx, t.symbol("start_kernel"))
    assert (sym.name, sym.offset) == ("start_kernel", 0)
    assert str(sym).startswith("start_kernel+0x0/0x")
