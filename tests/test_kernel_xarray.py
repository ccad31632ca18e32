"""memscope.kernel.xarray on every lab kernel: the page cache of every inode
(address_space.i_pages) and the pid namespace's IDR (init_pid_ns.idr.idr_rt, an XArray
since v4.20), against drgn's xa_for_each and xa_load on the same dump; the page cache's
entries against the kernel's own page count (mapping->nrpages)."""

from __future__ import annotations

import drgn
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import compound_nr
from drgn.helpers.linux.xarray import xa_for_each, xa_load

from kernel_dumps import open_dump
from memscope.kernel import xarray


def _mappings(prog):
    """Every inode's address_space that holds pages."""
    for sb in list_for_each_entry("struct super_block", prog["super_blocks"].address_of_(),
                                  "s_list"):
        for inode in list_for_each_entry("struct inode", sb.s_inodes.address_of_(),
                                         "i_sb_list"):
            if inode.i_mapping and inode.i_mapping.nrpages:
                yield inode.i_mapping


def test_page_cache_xarrays_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    files = pages = 0
    for mapping in _mappings(prog):
        xa = mapping.i_pages.address_of_()
        want = [(i, e.value_()) for i, e in xa_for_each(xa)]
        problems = []
        got = list(xarray.xa_for_each(t, xa.value_(), bound=1 << 20, problems=problems))
        assert problems == [] and got == want, hex(mapping.value_())
        # each page entry is a page or folio of compound_nr() pages: they add up to nrpages
        nr = sum(compound_nr(drgn.Object(prog, "struct page *", e)).value_()
                 for _, e in got if not xarray.xa_is_value(e))
        assert nr == mapping.nrpages.value_()
        for index, entry in got[::5]:
            assert xarray.xa_load(t, xa.value_(), index) == entry
        last = got[-1][0]
        for index in (last + 1, last + 64, last + (1 << 20), 1 << 40):
            assert xarray.xa_load(t, xa.value_(), index) == xa_load(xa, index).value_()
        files += 1
        pages += nr
    assert files > 100 and pages > 1000


def test_pid_idr_matches_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    xa = prog["init_pid_ns"].idr.idr_rt.address_of_()
    want = [(i, e.value_()) for i, e in xa_for_each(xa)]
    problems = []
    got = list(xarray.xa_for_each(t, xa.value_(), bound=1 << 22, problems=problems))
    assert problems == [] and got == want and len(got) > 20
    for index, entry in got:
        assert xarray.xa_load(t, xa.value_(), index) == entry
    for index in range(got[-1][0] + 1):
        assert xarray.xa_load(t, xa.value_(), index) == xa_load(xa, index).value_()
