"""The kernel's generic data structures, read through a Target and named as the kernel
names them: bounded, checked walks of lists and hash lists (:mod:`.list`), red-black
trees (:mod:`.rbtree`), maple trees (:mod:`.maple`) and XArrays (:mod:`.xarray`); per-CPU
data (:mod:`.percpu`), CPU and node masks and bitmaps (:mod:`.cpumask`, :mod:`.nodemask`,
:mod:`.bitops`); members and bit fields out of bulk-read memory (:mod:`.fields`); the
kernel's virtual address layout (:mod:`.addr`) and one page-table walker (:mod:`.pgtable`).

Every walk turns corruption into :class:`~memscope.kernel.problem.Problem` records.  This
package never imports drgn or gdb."""
