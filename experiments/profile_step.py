r"""Where the train step's device time goes: top kernels and kernel categories.

  python -m experiments.profile_step                      # paper64_vaegan, bfloat16, batch 256
  python -m experiments.profile_step --row=default32_vaegan --batch_size=16 --dtype=float32
  python -m experiments.profile_step --json_out=/tmp/prof.json \
      --xla_flags=--xla_gpu_autotune_level=4 --xla_dump_dir=/tmp/hlo

Builds the pmapped train step (the one training runs) for ``--row``, compiles
and warms it, then captures ``jax.profiler.trace`` over ``--steps`` steps
(dispatched back to back, as training does, and waited for once at the end).
It then reads the trace's Chrome-trace JSON itself (``<logdir>/plugins/profile/
<run>/<host>.trace.json.gz``; no TensorBoard, no TensorFlow), matches each
kernel to its instruction in the step's optimized HLO (through the event's
``hlo_op``; the HLO text is saved next to the trace) and prints:

  * the top kernels by device time (name with XLA's numeric suffix cut, launches
    per step, total ms, ms per step, % of the step), the same by HLO
    instruction, and by JAX source op (the HLO metadata's ``op_name``, e.g.
    ``transpose(jvp(Discriminator))/conv1/conv_general_dilated``: layer and pass);
  * the time per coarse category: conv fwd / conv bwd-input / conv bwd-filter
    (cuDNN's fprop/dgrad/wgrad; on CPU, conv fwd / conv bwd by the pass),
    gemm, reduction (the BatchNorm statistics), fusion/elementwise,
    copy/transpose, collective, other, and the idle part of the step.

Times are self times (an XLA:CPU while/call thunk less the thunks nested in
it). Where kernels run concurrently (CPU threads, GPU streams) the
percentages add up to more than 100.

Device events are the kernels and copies on the ``Stream #..`` lines of the
``/device:GPU:N`` processes (the trace's ``process_name``/``thread_name``
metadata); the derived lines (``XLA Ops``, ``XLA Modules``, ``Steps``, ...)
would count the same time twice and are left out. On CPU there is no device
process: the XLA ops are the host events that carry an ``hlo_op`` argument
(and if there are none, every complete event is taken). The step time is the
span of the selected events on one device divided by the steps.

``--xla_flags`` (appended to ``XLA_FLAGS``) and ``--xla_dump_dir`` (adds
``--xla_dump_to``) are set in ``main`` before anything starts a JAX backend,
so a driver can run one process per attempt (say different autotune levels)
and keep each one's ``--json_out``. Needs no TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable, Iterable

from absl import flags

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order

from experiments import rows

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the flags, only when run as a program (tests import the trace parser)."""
  flags.DEFINE_string("row", "paper64_vaegan", "<model>_<kind>: model paper64 (CelebA config) or "
                      "default32 (digits config); kind vaegan | vae | gan | vae_dis_l.")
  flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Computation dtype.")
  flags.DEFINE_integer("batch_size", 256, "Global batch size.")
  flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "fast"], "Conv implementation.")
  flags.DEFINE_integer("steps", 10, "Profiled steps.")
  flags.DEFINE_integer("warmup", 3, "Steps run after compiling and before the trace.")
  flags.DEFINE_integer("top", 25, "Rows of the kernel and HLO-op tables.")
  flags.DEFINE_string("logdir", None, "Profile directory (default: a fresh temporary one, "
                      "kept). Open it with XProf/TensorBoard, or its perfetto_trace.json.gz in "
                      "ui.perfetto.dev.")
  flags.DEFINE_string("json_out", None, "Write the results here as JSON.")
  flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS before JAX starts, e.g. "
                      "'--xla_gpu_autotune_level=4'.")
  flags.DEFINE_string("xla_dump_dir", None, "Dump the train step's HLO here: adds --xla_dump_to "
                      "and an --xla_dump_hlo_module_re matching the pmapped step to XLA_FLAGS "
                      "before JAX starts.")


# ---------------------------------------------------------------------------
# Kernel categories.

CATEGORIES = ("conv fwd", "conv bwd-input", "conv bwd-filter", "conv bwd", "conv", "gemm",
              "reduction", "fusion/elementwise", "copy/transpose", "collective", "other")

_COLLECTIVE = re.compile(r"nccl|all-?reduce|all_reduce|allreduce|all-?gather|all_gather|"
                         r"reduce-?scatter|reduce_scatter|collective|all-?to-?all|psum", re.I)
_COPY = re.compile(r"memcpy|memset|copy|transpose|nchwtonhwc|nhwctonchw|"
                   r"dynamic[-_]update[-_]slice|concatenate", re.I)
# 'conv' but never 'convert'; cuDNN's implicit-GEMM conv kernels are 'xmma_fprop/dgrad/wgrad'.
_CONV = re.compile(r"cudnn|conv(?!ert)|fprop|dgrad|wgrad|implicit|winograd", re.I)
_CONV_BWD_INPUT = re.compile(r"dgrad|bw-input|bw_input|backward_?input", re.I)
_CONV_BWD_FILTER = re.compile(r"wgrad|bw-filter|bw_filter|backward_?filter", re.I)
_CONV_FWD = re.compile(r"fprop|cudnn-conv(?!-bw)|conv_?fwd|forward", re.I)
_GEMM = re.compile(r"gemm|gemv|cublas|matmul|dot|cutlass", re.I)
_REDUCTION = re.compile(r"reduc|batch_?norm|bn_fw|bn_bw|argmax|argmin|sort", re.I)
_FUSION = re.compile(r"fusion|fused|loop_|elementwise|wrapped_|triton|convert|add|multiply|"
                     r"subtract|divide|select|exp|log|tanh|sqrt|rsqrt|maximum|minimum|"
                     r"negate|compare|iota|ynn|xnn", re.I)
_COLLECTIVE_OPS = {"all-reduce", "all-reduce-start", "all-reduce-done", "all-gather",
                   "all-gather-start", "all-gather-done", "reduce-scatter", "all-to-all",
                   "collective-permute", "collective-permute-start", "collective-permute-done"}
_REDUCE_OPS = {"reduce", "reduce-window", "select-and-scatter", "sort", "scatter"}
_MOVE_OPS = {"copy", "transpose", "bitcast", "reshape", "parameter", "constant", "tuple",
             "get-tuple-element", "concatenate", "slice", "dynamic-slice",
             "dynamic-update-slice", "pad", "broadcast", "gather", "reverse", "copy-start",
             "copy-done", "bitcast-convert"}
_BOOKKEEPING_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
_CONTAINER_OPS = {"fusion", "call", "while", "conditional", "async-start", "async-done"}


@dataclasses.dataclass(frozen=True)
class HloInfo:
  """What the optimized HLO says about one instruction (fusions: their whole body)."""
  opcode: str = ""
  opcodes: frozenset = frozenset()
  targets: frozenset = frozenset()  # custom-call targets, e.g. '__cudnn$convForward'
  op_name: str = ""  # JAX source op (metadata), e.g. 'jvp(Decoder)/convT2/conv_general_dilated'


def category(name: str, hlo_op: str = "", hlo: HloInfo | None = None) -> str:
  """Coarse category of one kernel, from its name, its HLO op and (when known) the HLO.

  Convs are split by what the kernel computes where the kernel name, the HLO
  op or the cuDNN custom call says (a transposed conv's forward pass runs as
  cuDNN's dgrad: 'conv bwd-input'), else by the pass the JAX source op is in
  ('conv fwd' / 'conv bwd'), else plain 'conv'.

  >>> category("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc")
  'conv fwd'
  >>> category("loop_reduce_fusion")
  'reduction'
  """
  hlo = hlo or HloInfo()
  text = f"{name} {hlo_op}"
  targets = " ".join(sorted(hlo.targets))
  ops = hlo.opcodes - _CONTAINER_OPS
  source = hlo.op_name.rsplit("/", 1)[-1]
  if _COLLECTIVE.search(text) or ops & _COLLECTIVE_OPS or "nccl" in targets.lower():
    return "collective"
  if (_CONV.search(text) or re.search(r"cudnn\$conv", targets) or "convolution" in ops or
      re.match(r"conv(?!ert)", source)):
    # Before copy: a conv whose name also says 'transpose' is still a conv.
    both = f"{text} {targets}"
    if _CONV_BWD_FILTER.search(both):
      return "conv bwd-filter"
    if _CONV_BWD_INPUT.search(both):
      return "conv bwd-input"
    if _CONV_FWD.search(both):
      return "conv fwd"
    if hlo.op_name:
      return "conv bwd" if "transpose(" in hlo.op_name else "conv fwd"
    return "conv"
  if _COPY.search(name):
    return "copy/transpose"
  if _GEMM.search(text) or re.search(r"cublas|gemm|matmul", targets, re.I) or "dot" in ops:
    return "gemm"
  if _REDUCTION.search(name) or ops & _REDUCE_OPS:
    return "reduction"
  if ops and ops - _BOOKKEEPING_OPS and ops <= _MOVE_OPS:
    return "copy/transpose"
  if _FUSION.search(name) or (ops and ops - _MOVE_OPS):
    return "fusion/elementwise"
  if _COPY.search(hlo_op):
    return "copy/transpose"
  if _REDUCTION.search(hlo_op):
    return "reduction"
  if _FUSION.search(hlo_op):
    return "fusion/elementwise"
  return "other"


def base_name(name: str) -> str:
  """Kernel name with XLA's instance suffix cut: 'loop_add_fusion_12' -> 'loop_add_fusion'."""
  name = name.strip().lstrip("%")
  prev = None
  while prev != name:
    prev = name
    name = re.sub(r"[._]\d+$", "", name)
  return name or prev


def source_op(op_name: str) -> str:
  """'jit(_fun)/transpose(jvp(Decoder))/convT2/conv_general_dilated' -> from 'transpose(...'."""
  parts = op_name.split("/")
  while len(parts) > 1 and re.match(r"^(jit|pmap|xla_pmap|shard_map)\(", parts[0]):
    parts = parts[1:]
  return "/".join(parts)


# ---------------------------------------------------------------------------
# The optimized HLO.

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"\b(?:calls|to_apply|body|condition)=\{?%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def parse_hlo(text: str) -> tuple[str, dict[str, HloInfo]]:
  """(module name, instruction name -> HloInfo) of an HLO module's text.

  A fusion's (or call's, while's) info includes the opcodes and custom-call
  targets of the computations it calls, recursively.
  """
  module = ""
  comps = collections.defaultdict(list)  # computation -> [(opcode, target, callees)]
  inst = {}  # name -> (opcode, target, callees, op_name)
  comp = None
  for line in text.splitlines():
    if line.startswith("HloModule "):
      module = line.split()[1].rstrip(",")
      continue
    if not line.startswith((" ", "\t")):
      m = _COMPUTATION.match(line)
      comp = m.group(1) if m else None
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op = _OPCODE.search(" " + rest)
    opcode = op.group(1) if op else ""
    callees = _CALLS.findall(rest)
    for b in _BRANCHES.findall(rest):
      callees += [c.strip().lstrip("%") for c in b.split(",") if c.strip()]
    target = _TARGET.search(rest)
    target = target.group(1) if target else ""
    op_name = _OP_NAME.search(rest)
    inst[name] = (opcode, target, callees, op_name.group(1) if op_name else "")
    if comp is not None:
      comps[comp].append((opcode, target, callees))

  memo = {}

  def body(c: str, seen: frozenset) -> tuple[frozenset, frozenset]:
    if c in memo:
      return memo[c]
    ops, tgts = set(), set()
    for opcode, target, callees in comps.get(c, ()):
      ops.add(opcode)
      if target:
        tgts.add(target)
      for callee in callees:
        if callee not in seen:
          o, t = body(callee, seen | {callee})
          ops |= o
          tgts |= t
    memo[c] = (frozenset(ops), frozenset(tgts))
    return memo[c]

  infos = {}
  for name, (opcode, target, callees, op_name) in inst.items():
    ops, tgts = {opcode}, {target} if target else set()
    for callee in callees:
      o, t = body(callee, frozenset({callee}))
      ops |= o
      tgts |= t
    infos[name] = HloInfo(opcode, frozenset(ops - {""}), frozenset(tgts), source_op(op_name))
  return module, infos


# ---------------------------------------------------------------------------
# The trace.

# Lines that XProf derives from the kernels themselves (their time would count twice).
_DERIVED_LINES = ("XLA Ops", "XLA Modules", "Async XLA Ops", "Steps", "TensorFlow Ops",
                  "TensorFlow Name Scope", "Framework Ops", "Framework Name Scope",
                  "Launch Stats", "Source code", "CUPTI overhead", "SparseCore")


def find_trace_file(logdir: str) -> str:
  """The newest run's ``<host>.trace.json.gz`` under ``logdir/plugins/profile``."""
  runs = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*")), key=os.path.getmtime)
  for run in reversed(runs):
    files = [f for f in glob.glob(os.path.join(run, "*.trace.json.gz"))
             if not os.path.basename(f).startswith("perfetto_trace")]
    if files:
      return files[0]
  raise FileNotFoundError(f"no *.trace.json.gz under {logdir}/plugins/profile/*/")


def load_trace(path: str) -> dict:
  with gzip.open(path, "rt") as f:
    return json.load(f)


def select_device_events(trace: dict) -> tuple[list[dict], str]:
  """The trace's device kernels (complete events), and how they were chosen.

  Returns (events, source); each event gets ``_dev`` (its device) added.
  """
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") != "M":
      continue
    name = (e.get("args") or {}).get("name", "")
    if e.get("name") == "process_name":
      procs[e.get("pid")] = name
    elif e.get("name") == "thread_name":
      threads[(e.get("pid"), e.get("tid"))] = name
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]
  device_pids = {p for p, n in procs.items() if n.startswith("/device:")}
  if device_pids:
    by_pid = collections.defaultdict(list)
    for e in complete:
      if e.get("pid") in device_pids:
        by_pid[e["pid"]].append(e)
    chosen, kinds = [], set()
    for pid, evs in by_pid.items():
      line = lambda e: threads.get((pid, e.get("tid")), "")  # pylint: disable=cell-var-from-loop
      streams = [e for e in evs if line(e).startswith("Stream")]
      if streams:
        kinds.add("stream lines")
      else:  # e.g. TPU: the ops are on 'XLA Ops'
        streams = [e for e in evs if line(e) == "XLA Ops"]
        kinds.add("XLA Ops line")
        if not streams:
          streams = [e for e in evs if not line(e).startswith(_DERIVED_LINES)]
          kinds.add("all non-derived lines")
      for e in streams:
        e["_dev"] = procs[pid]
      chosen.extend(streams)
    if chosen:
      return chosen, "device processes (" + ", ".join(sorted(kinds)) + ")"
  ops = [e for e in complete if "hlo_op" in (e.get("args") or {})]
  if ops:
    for e in ops:
      e["_dev"] = str(e["args"].get("device_ordinal", "0"))
    return ops, "host events with an hlo_op (no device process)"
  for e in complete:
    e["_dev"] = str(e.get("pid"))
  return complete, "all complete events (no device process, no hlo_op)"


def self_times(events: list[dict]) -> list[float]:
  """Each event's duration less that of the events nested in it on the same line.

  XLA:CPU's while/call thunks enclose the thunks of their bodies; counting
  both would count the body twice. GPU stream lines do not nest.
  """
  own = [float(e["dur"]) for e in events]
  by_line = collections.defaultdict(list)
  for i, e in enumerate(events):
    by_line[(e.get("pid"), e.get("tid"))].append(i)
  for idx in by_line.values():
    idx.sort(key=lambda i: (events[i]["ts"], -events[i]["dur"]))
    stack = []  # (index, end)
    for i in idx:
      s, end = events[i]["ts"], events[i]["ts"] + events[i]["dur"]
      while stack and stack[-1][1] <= s:
        stack.pop()
      if stack:
        own[stack[-1][0]] -= min(end, stack[-1][1]) - s
      stack.append((i, end))
  return [max(0.0, t) for t in own]


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for s, e in sorted(intervals):
    if e <= end:
      continue
    total += e - max(s, end)
    end = e
  return total


def _table(groups: dict, steps: int, n_dev: int, step_us: float, top: int, key: str) -> list[dict]:
  """Rows of the heaviest groups; a group's category is the one most of its time has,
  marked '*' when another category has over a tenth of it."""
  rows = []
  for name, (count, dur, cats) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]:
    per_step = dur / steps / n_dev
    (cat, t), = cats.most_common(1)
    rows.append({key: name, "category": cat + ("*" if t < 0.9 * sum(cats.values()) else ""),
                 "category_ms": {c: v / 1e3 for c, v in cats.most_common()},
                 "count": count / n_dev / steps, "total_ms": dur / 1e3,
                 "ms_per_step": per_step / 1e3,
                 "percent_of_step": 100 * per_step / step_us if step_us else float("nan")})
  return rows


def summarize(trace: dict, steps: int, top: int = 25, hlo_text: str | None = None) -> dict:
  """Top kernels, HLO ops and source ops, and category totals of ``steps`` profiled steps.

  Times are self times (less nested events), per step and per device
  (averaged over the devices in the trace); ``count`` is launches per step
  per device; ``total_ms`` is over all steps and devices. The step is the
  span of one device's events over ``steps``. ``hlo_text`` (the step's
  optimized HLO) refines the categories and names each op's JAX source op.
  """
  events, source = select_device_events(trace)
  if not events:
    raise ValueError("the trace has no complete events")
  module, infos = parse_hlo(hlo_text) if hlo_text else ("", {})
  devs = sorted({e["_dev"] for e in events})
  n_dev = len(devs)
  spans, busy = [], []
  for d in devs:
    iv = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["_dev"] == d]
    spans.append(max(b for _, b in iv) - min(a for a, _ in iv))
    busy.append(_union_us(iv))
  step_us = sum(spans) / n_dev / steps
  busy_us = sum(busy) / n_dev / steps
  kernels, ops, sources, cats = {}, {}, {}, collections.Counter()
  matched = 0
  for e, dur in zip(events, self_times(events)):
    name = e.get("name", "?")
    args = e.get("args") or {}
    hlo_op = str(args.get("hlo_op", ""))
    info = None
    if hlo_op and (not module or str(args.get("hlo_module", module)).startswith(module)):
      info = infos.get(hlo_op)
    matched += info is not None
    cat = category(name, hlo_op, info)
    src = (info.op_name or "(no metadata)") if info else "(not in the step's HLO)"
    for table, k in ((kernels, base_name(name)), (ops, hlo_op or base_name(name)),
                     (sources, src)):
      c, t, by_cat = table.get(k, (0, 0.0, collections.Counter()))
      by_cat[cat] += dur
      table[k] = (c + 1, t + dur, by_cat)
    cats[cat] += dur
  kernel_us = sum(cats.values()) / n_dev / steps
  cat_rows = [{"category": c, "ms_per_step": cats[c] / n_dev / steps / 1e3,
               "percent_of_step": 100 * cats[c] / n_dev / steps / step_us}
              for c in CATEGORIES if cats[c]]
  cat_rows.sort(key=lambda r: -r["ms_per_step"])
  idle = max(0.0, step_us - busy_us)
  cat_rows.append({"category": "idle (no kernel running)", "ms_per_step": idle / 1e3,
                   "percent_of_step": 100 * idle / step_us})
  out = dict(source=source, devices=devs, steps=steps, step_ms=step_us / 1e3,
             busy_ms_per_step=busy_us / 1e3, kernel_ms_per_step=kernel_us / 1e3,
             events=len(events), hlo_module=module, events_matched_to_hlo=matched,
             kernels=_table(kernels, steps, n_dev, step_us, top, "kernel"),
             hlo_ops=_table(ops, steps, n_dev, step_us, top, "hlo_op"),
             categories=cat_rows)
  if infos:
    out["source_ops"] = _table(sources, steps, n_dev, step_us, top, "source_op")
  return out


def profile(fn: Callable[[], object], steps: int, logdir: str) -> tuple[dict, float]:
  """Runs ``fn`` ``steps`` times under the profiler; returns (trace, host seconds per step).

  ``fn`` should dispatch one step and return its outputs; the steps are
  waited for once, at the end, so the device sees them back to back.
  """
  import jax  # pylint: disable=g-import-not-at-top

  out = None
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    t = time.perf_counter()
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=i):
        out = fn()
    jax.block_until_ready(out)
    wall = (time.perf_counter() - t) / steps
  return load_trace(find_trace_file(logdir)), wall


def format_tables(s: dict, width: int = 72) -> str:
  def short(n):
    return n if len(n) <= width else n[:width - 3] + "..."

  overlap = s["kernel_ms_per_step"] > 1.01 * s["busy_ms_per_step"]
  lines = [f"step {s['step_ms']:.3f} ms (span of the device events / {s['steps']} steps), "
           f"busy {s['busy_ms_per_step']:.3f} ms, kernels {s['kernel_ms_per_step']:.3f} ms; "
           f"{s['events']} events on {len(s['devices'])} device(s) from {s['source']}; "
           f"{s['events_matched_to_hlo']} matched to the HLO of {s['hlo_module'] or '(none)'}"]
  if overlap:
    lines.append("kernels overlap in time (concurrent threads or streams): the percentages "
                 "add up to more than 100")
  for key, title in (("kernels", "kernel"), ("hlo_ops", "hlo_op"), ("source_ops", "source_op")):
    if key not in s:
      continue
    head = f"{'top ' + title + 's':<{width}} {'category':<19} {'n/step':>7} {'total ms':>10} " \
           f"{'ms/step':>9} {'% step':>7}"
    lines += ["", head, "-" * len(head)]
    for r in s[key]:
      lines.append(f"{short(r[title]):<{width}} {r['category']:<19} {r['count']:>7.1f} "
                   f"{r['total_ms']:>10.3f} {r['ms_per_step']:>9.3f} {r['percent_of_step']:>6.1f}%")
  head = f"{'category':<26} {'ms/step':>9} {'% step':>7}"
  lines += ["(category*: over a tenth of the row's time is in other categories)",
            "", head, "-" * len(head)]
  for r in s["categories"]:
    lines.append(f"{r['category']:<26} {r['ms_per_step']:>9.3f} {r['percent_of_step']:>6.1f}%")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# The binary.


def set_xla_flags(extra: str = "", dump_dir: str | None = None) -> str:
  """Appends to XLA_FLAGS; must run before anything starts a JAX backend."""
  add = extra.split()
  if dump_dir:  # jax 0.10 names the pmapped step's module 'jit__fun'
    add += [f"--xla_dump_to={dump_dir}", "--xla_dump_hlo_module_re=.*train_step.*|jit__fun"]
  if add:
    try:
      from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
      started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API; the check is only a guard
      started = False
    if started:
      raise RuntimeError("XLA_FLAGS set after a JAX backend started; they would be ignored.")
    os.environ["XLA_FLAGS"] = " ".join(os.environ.get("XLA_FLAGS", "").split() + add)
  return os.environ.get("XLA_FLAGS", "")


def main(argv):
  del argv
  xla_flags = set_xla_flags(FLAGS.xla_flags, FLAGS.xla_dump_dir)
  import jax  # pylint: disable=g-import-not-at-top

  config = rows.row_config(FLAGS.row, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
                           conv_impl=FLAGS.conv_impl)
  run, hlo = rows.build_step(config)
  t = time.perf_counter()
  jax.block_until_ready(run())
  compile_s = time.perf_counter() - t
  for _ in range(FLAGS.warmup):
    jax.block_until_ready(run())
  logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="profile_step_")
  trace, wall = profile(run, FLAGS.steps, logdir)
  try:
    hlo_text = hlo()
    with open(os.path.join(logdir, "train_step.after_optimizations.hlo.txt"), "w") as f:
      f.write(hlo_text)
  except Exception as e:  # pylint: disable=broad-except
    print(f"warning: no optimized HLO ({type(e).__name__}: {e}); categories from names only")
    hlo_text = None
  s = summarize(trace, FLAGS.steps, FLAGS.top, hlo_text)
  dev = jax.devices()[0]
  if jax.default_backend() != "cpu" and not s["source"].startswith("device"):
    print("warning: no device kernels in the trace (is CUPTI available?); the tables show "
          "host events")
  print(f"device: {dev.device_kind} x{jax.local_device_count()} ({jax.default_backend()}), "
        f"row {FLAGS.row}, {FLAGS.dtype}, batch {FLAGS.batch_size}, conv "
        f"{config.model.conv_impl}; compile+first step {compile_s:.1f} s; host wall "
        f"{wall * 1e3:.3f} ms/step ({FLAGS.batch_size / wall:.1f} img/s)")
  if xla_flags:
    print(f"XLA_FLAGS: {xla_flags}")
  print(format_tables(s))
  print(f"\ntrace: {find_trace_file(logdir)}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(dict(device=dev.device_kind, backend=jax.default_backend(),
                     device_count=jax.local_device_count(), jax_version=jax.__version__,
                     row=FLAGS.row, kind=config.kind, image_size=config.model.image_size,
                     dtype=FLAGS.dtype, batch=FLAGS.batch_size, conv_impl=config.model.conv_impl,
                     xla_flags=xla_flags, xla_dump_dir=FLAGS.xla_dump_dir, compile_s=compile_s,
                     host_wall_ms_per_step=wall * 1e3, images_per_s=FLAGS.batch_size / wall,
                     logdir=logdir, trace_file=find_trace_file(logdir), **s), f, indent=2)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
