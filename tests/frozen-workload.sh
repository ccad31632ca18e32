# The workload of the guests the GDB and QMP equality tests keep paused (tests/guests.py): every
# kind of page the commands classify (a hugetlb pool, page cache, slab, an anonymous heap)
# without mixed.sh's compaction and memory fill, which take minutes under TCG and which
# those tests do not need (they compare backends on the same state, not with /proc).
echo 16 > /proc/sys/vm/nr_hugepages
sh /workloads/pagecache-frag.sh 3000
sh /workloads/slab-churn.sh 12000
sh /workloads/heap.sh
