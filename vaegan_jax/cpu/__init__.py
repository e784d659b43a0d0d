"""Speed-ups that matter on XLA:CPU only (measured in docs/performance.md).

  fast_conv.py    phase forms of stride-2 and transposed convs, batch chunks:
                  what ``conv_impl='auto'`` picks on the CPU backend
                  (``layers.resolve_impl``); GPUs and TPUs use XLA's own convs.
  host_memory.py  the one place that decides whether a binary re-executes
                  itself with glibc's transparent-huge-page tunable.
"""
